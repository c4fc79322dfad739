"""Classical, non-learned baseline: Otsu threshold per modality + largest component."""

from __future__ import annotations

import numpy as np
from skimage.filters import threshold_otsu
from skimage.measure import label

# lesion polarity per modality: hypoechoic on US, dense on MG, enhancing on MRI
POLARITY = {"us": "dark", "mg": "bright", "mri": "bright"}


def otsu_segment(img: np.ndarray, polarity: str) -> np.ndarray:
    t = threshold_otsu(img)
    fg = img < t if polarity == "dark" else img > t
    lab = label(fg)
    if lab.max() == 0:
        return fg.astype(np.uint8)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return (lab == int(np.argmax(sizes))).astype(np.uint8)
