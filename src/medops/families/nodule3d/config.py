"""Configuration of the `nodule3d` family (paper 004): the simulated chest CT (`lidc_sim:`), the patch
preprocessing (`preprocess_nodule:`), data, model, loss, training, evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from medops.config import AblationConfig, PromoteConfig, TrainConfig

ARCHS = ("nodule3d_ensemble", "nodule3d_subnet", "nodule3d_ifm", "monai_resnet3d", "monai_densenet3d")


@dataclass(frozen=True)
class LidcSimConfig:
    """params.yaml `lidc_sim:` — chest CT sub-volumes holding real LIDC-IDRI nodules (medops.data.lidc_sim)."""
    RULES: ClassVar[dict] = {"n_nodules": "[4, 10000]", "cluster_mm": "(0, 50]", "aggregate": ("median", "mean", "max", "mode"),
                             "rating3": ("exclude", "benign"), "max_nodules_per_case": "[1, 8]", "fov_mm": "[24, 400]",
                             "fov_z_mm": "[24, 400]", "centre_margin_mm": "[0, 100]", "juxtapleural": "[0, 1]", "juxtavascular": "[0, 1]",
                             "psf_fwhm_mm": "[0, 5]", "workers": "[1, 64]", "folds": "[2, 10]", "max_diameter_mm": "(0, 100]"}
    seed: int = 0
    n_nodules: int = 40                   # labelled nodules to draw (whole scans: a case holds all its nodules)
    cluster_mm: float = 8.0               # readers' annotations closer than this (centroids) are one nodule
    aggregate: str = "median"             # readers' malignancy -> the nodule's: median | mean | max | mode
    rating3: str = "benign"               # aggregated malignancy 3: benign (written, labelled benign, with
                                          # malignancy 3; the model's rating3 policy uses or drops them) | exclude
    max_nodules_per_case: int = 2
    max_diameter_mm: float = 30.0         # larger lesions are masses, not nodules
    fov_mm: float = 72.0                  # in-plane field of view of a case
    fov_z_mm: float = 72.0                # extent along z
    centre_margin_mm: float = 0.0         # nodule centres at least this far from the edges (half the patch)
    juxtapleural: float = 0.25            # share of nodules placed against the chest wall
    juxtavascular: float = 0.2            # share placed against a vessel
    psf_fwhm_mm: float = 0.8              # in-plane point-spread function (z: the slice thickness)
    noise_hu: tuple = (10.0, 60.0)        # dose-dependent noise sigma range (HU)
    folds: int = 5                        # patient-level folds (paper 004: mean ± std over folds)
    workers: int = 1


@dataclass(frozen=True)
class NodulePreprocessConfig:
    """params.yaml `preprocess_nodule:` — paper 004 section 4.1: a cube around each nodule centre, Eq. 14 window."""
    RULES: ClassVar[dict] = {"cube": "[8, 256]", "spacing_mm": "[0, 5]", "workers": "[1, 64]", "folds": "[2, 20]"}
    cube: int = 64                        # voxels per side (the largest scale)
    spacing_mm: float = 1.0               # isotropic resampling first (0: keep the scan's spacing)
    hu_min: float = -1000.0               # Eq. 14: -1000..400 HU -> 0..1
    hu_max: float = 400.0
    folds: int = 5                        # patient-level folds assigned when nodules.csv has none (your own data)
    workers: int = 1


@dataclass(frozen=True)
class NoduleModelConfig:
    RULES: ClassVar[dict] = {"arch": ARCHS, "dropout": "[0, 1)", "hidden": "[1, 100000]",
                             "scale": ("small", "medium", "large"), "rating3": ("exclude", "benign")}
    arch: str = "nodule3d_ensemble"
    scales: tuple = (32, 48, 64)          # ensemble sub-networks (Eq. 4)
    scale: str = "large"                  # a single sub-network's scale: small | medium | large (of scales)
    channels: tuple = (16, 32, 64, 64, 128)
    hidden: int = 486                     # Table 3
    dropout: float = 0.5                  # Table 3
    branches: tuple | str = ("macro", "micro", "general")   # IFM channels (an ablation level: "macro_micro")
    resnet_layers: tuple = (1, 1, 1, 1)
    resnet_widths: tuple = (32, 64, 128, 256)
    densenet_block_config: tuple = (2, 4, 6, 4)
    rating3: str = "exclude"              # nodules rated 3 (indeterminate) in training and validation: exclude
                                          # (paper-like) | benign. Never in the test folds (paired comparisons)


@dataclass(frozen=True)
class NoduleAugmentConfig:
    RULES: ClassVar[dict] = {"translate": "[0, 32]"}
    flips: bool = True                    # random flips on the three axes
    translate: int = 2                    # random shift of the cube, voxels (air fills in)


@dataclass(frozen=True)
class NoduleEvaluateConfig:
    RULES: ClassVar[dict] = {"bootstrap": "[0, inf)", "weight_step": "(0, 1]"}
    bootstrap: int = 1000
    weight_step: float = 0.1              # simplex grid step of the ensemble weights
    cutoff: float = 0.5                   # paper: metrics at cutoff 0.5


@dataclass(frozen=True)
class Nodule3DConfig:
    """params.yaml `nodule3d:` (+ `ablation.nodule3d`, `promote.nodule3d`)."""
    dataset: str = "lidc-sim"
    model: NoduleModelConfig = NoduleModelConfig()
    train: TrainConfig = TrainConfig()
    augment: NoduleAugmentConfig = NoduleAugmentConfig()
    evaluate: NoduleEvaluateConfig = NoduleEvaluateConfig()
    ablation: AblationConfig = AblationConfig()
    promote: PromoteConfig = PromoteConfig()
