"""Grad-CAM (Selvaraju et al. 2017; paper 002 section 3.6) through MONAI, and how well it localises.

``gradcam(net, images, class_idx, layer)`` returns maps in [0, 1] at the input size from the
named layer (every medops classifier exposes ``gradcam_layer``: the last convolutional feature
map of its backbone). ``localisation_scores`` compares a map with the lesion mask:

* ``energy_in_mask`` — share of the heatmap's total energy inside the mask;
* ``pointing_hit`` — the pointing game: is the map's maximum inside the mask;
* ``mask_fraction`` — the mask's share of the image, i.e. the chance level of both scores
  for a map that carries no information.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.visualize import GradCAM


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-map scaling of the (ReLU'd) Grad-CAM to [0, 1], largest = 1. MONAI's default normaliser maps the
    maximum to 0 (it flips magnitudes), which would invert every localisation score."""
    flat = x.reshape(x.shape[0], -1)
    shape = (-1, *([1] * (x.dim() - 1)))                       # 2-D (N, 1, H, W) or 3-D (N, 1, D, H, W) maps
    lo, hi = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def gradcam(net: torch.nn.Module, images: torch.Tensor, class_idx: int | None = 1, layer: str | None = None,
            batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps (N, H, W) — or (N, D, H, W) for 3-D inputs — in [0, 1] for ``class_idx`` (None: the
    predicted class)."""
    layer = layer or getattr(net, "gradcam_layer", None)
    if layer is None:
        raise ValueError("name the Grad-CAM layer (the model has no gradcam_layer)")
    frozen = [p for p in net.parameters() if not p.requires_grad]
    for p in frozen:  # a frozen trunk (feature extraction) still needs gradients for the map
        p.requires_grad_(True)
    was_training = net.training
    try:
        cam = GradCAM(nn_module=net.eval(), target_layers=layer, postprocessing=_minmax)
        out = []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].float().requires_grad_(True)  # so the backward hooks see an input grad
            out.append(cam(x=x, class_idx=class_idx).detach()[:, 0].cpu().numpy())
        net.zero_grad(set_to_none=True)
        return np.concatenate(out) if out else np.zeros((0, *images.shape[-2:]), np.float32)
    finally:
        for p in frozen:
            p.requires_grad_(False)
        net.train(was_training)


def localisation_scores(cam: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Energy share inside the mask, pointing-game hit, and the mask's area share (chance)."""
    m = mask.astype(bool)
    energy = float(cam[m].sum() / cam.sum()) if cam.sum() > 0 else float("nan")
    hit = float(m.flat[int(np.argmax(cam))])
    return {"energy_in_mask": energy, "pointing_hit": hit, "mask_fraction": float(m.mean())}
