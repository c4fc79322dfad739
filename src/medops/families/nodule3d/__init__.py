"""`nodule3d` (paper 004): lung-nodule malignancy from CT, multi-scale 3-D CNN ensemble + AUC loss."""

from medops.families.nodule3d.family import Nodule3D  # noqa: F401  (registers the family)
