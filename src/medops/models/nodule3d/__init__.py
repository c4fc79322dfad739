"""`nodule3d` (paper 004): 3-D CNNs for lung-nodule malignancy on CT patches (registered by name)."""

from medops.models.nodule3d.net import (  # noqa: F401
    IFM, MultiScaleEnsemble, SubNet3D, center_crop3d, simplex_grid,
)
