"""`fusion_seg` (paper 000): US + mammography + MRI tumour segmentation with attention fusion."""

from medops.families.fusion_seg.family import FusionSeg  # noqa: F401  (registers the family)
