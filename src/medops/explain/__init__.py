"""Explanations by layer name: Grad-CAM (MONAI) and a localisation score against lesion masks."""

from medops.explain.gradcam import gradcam, localisation_scores  # noqa: F401
