"""``fusion_seg``: multi-modal tumour segmentation with attention fusion (paper 000)."""

from medops.models.fusion_seg.net import FUSIONS, STRATEGIES, FusionSegNet, LateFusionNet, build  # noqa: F401
