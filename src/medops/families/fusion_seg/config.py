"""Configuration of the `fusion_seg` family (paper 000): its simulator (`generate:`), preprocessing
(`preprocess:`), model, training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from medops.config import AblationConfig, PromoteConfig, TrainConfig
from medops.errors import ConfigError

MODALITIES = ("us", "mg", "mri")  # the image channels of a breast-trimodal case, in stack order


@dataclass(frozen=True)
class BreastTrimodalConfig:
    """params.yaml `generate:` — the tri-modal breast simulator (paper 000 Table 1)."""
    RULES: ClassVar[dict] = {"n_cases": "[3, inf)", "test_cases": "[0, inf)", "cases_per_patient_max": "[1, inf)", "us_size": "[32, 4096]",
                             "mg_size": "[32, 4096]", "mri_size": "[32, 4096]", "pixel_mm": "(0, inf)",
                             "tumour_diameter_mm": "(0, inf)", "mri_max_rotation_deg": "[0, 45]",
                             "mri_max_shift_px": "[0, inf)", "workers": "[1, 64]"}
    dataset: str = "breast-trimodal"
    seed: int = 0
    n_cases: int = 24
    test_cases: int = 0                   # extra test-only cases (new patients): a test set sized for the claims
    cases_per_patient_max: int = 2
    us_size: int = 256
    mg_size: int = 512
    mri_size: int = 256
    pixel_mm: float = 0.2
    tumour_diameter_mm: tuple[float, float] = (6.0, 22.0)
    mri_max_rotation_deg: float = 6.0
    mri_max_shift_px: float = 8.0
    workers: int = 1

    def check_values(self, where: str) -> None:
        lo, hi = self.tumour_diameter_mm
        if lo >= hi:
            raise ConfigError(f"params.yaml:{where}.tumour_diameter_mm", f"[{lo}, {hi}] is not a range (min < max)",
                              "write [smallest, largest] diameter in mm")


@dataclass(frozen=True)
class BreastPreprocessConfig:
    """params.yaml `preprocess:` — paper 000 Table 2 for the tri-modal breast data."""
    RULES: ClassVar[dict] = {"image_size": "[16, 2048]", "us_median_kernel": (1, 3, 5, 7, 9, 11),
                             "mg_clahe_clip": "(0, 1]", "mg_clahe_kernel": "[2, inf)", "registration_iterations": "[1, inf)",
                             "registration_shrink": "[1, 64]", "workers": "[1, 64]"}
    image_size: int = 64
    us_median_kernel: int = 5
    mg_clahe_clip: float = 0.01
    mg_clahe_kernel: int = 32
    registration_iterations: int = 40
    registration_shrink: tuple[int, ...] = (4, 2, 1)
    workers: int = 1


@dataclass(frozen=True)
class FusionSegModelConfig:
    """`fusion_seg.model`: a registered segmentation model and its fields."""
    RULES: ClassVar[dict] = {"arch": ("fusion_seg", "unet", "attention_unet"), "fusion": ("attention", "concat", "early", "late"),
                             "channels": "[1, 4096]", "residual_subunits": "[1, 8]"}
    arch: str = "fusion_seg"
    modalities: tuple[str, ...] = MODALITIES
    fusion: str = "attention"
    channels: tuple[int, ...] = (8, 16, 32)
    residual_subunits: int = 2


@dataclass(frozen=True)
class FusionSegEvaluateConfig:
    RULES: ClassVar[dict] = {"threshold": "[0, 1]", "baseline": ("otsu",)}
    threshold: float = 0.5
    baseline: str = "otsu"


@dataclass(frozen=True)
class FusionSegConfig:
    """params.yaml `fusion_seg:` (+ `ablation.fusion_seg`, `promote.fusion_seg`)."""
    model: FusionSegModelConfig = FusionSegModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: FusionSegEvaluateConfig = FusionSegEvaluateConfig()
    ablation: AblationConfig = AblationConfig()
    promote: PromoteConfig = PromoteConfig()
