"""Typed, frozen configuration built once from params.yaml.

A value written ``{smoke: a, quick: b, paper: c}`` is resolved by the top-level
``profile`` key, so the paper's numbers live beside the laptop ones.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medops.errors import ConfigError

PROFILES = ("smoke", "quick", "paper")
MODALITIES = ("us", "mg", "mri")


def _resolve(value: Any, profile: str, where: str) -> Any:
    if isinstance(value, dict) and value and set(value) <= set(PROFILES):
        if profile not in value:
            raise ConfigError(where, f"no value for profile '{profile}'", f"add '{profile}:' to {where}")
        return _resolve(value[profile], profile, where)
    if isinstance(value, dict):
        return {k: _resolve(v, profile, f"{where}.{k}") for k, v in value.items()}
    return value


def _build(cls, data: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"params.yaml:{where}", f"unknown key(s) {sorted(unknown)}",
                          f"use only {sorted(names)}")
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            v = _build(hints[f.name], v, f"{where}.{f.name}")
        elif isinstance(v, list) and typing.get_origin(hints[f.name]) is tuple:
            v = tuple(v)
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"params.yaml:{where}", str(exc), "add the missing key") from exc


@dataclass(frozen=True)
class GenerateConfig:
    dataset: str = "breast-trimodal"
    seed: int = 0
    n_cases: int = 24
    cases_per_patient_max: int = 2
    us_size: int = 256
    mg_size: int = 512
    mri_size: int = 256
    pixel_mm: float = 0.2
    tumour_diameter_mm: tuple[float, float] = (6.0, 22.0)
    mri_max_rotation_deg: float = 6.0
    mri_max_shift_px: float = 8.0
    workers: int = 1


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    fractions: dict = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})


@dataclass(frozen=True)
class ValidateConfig:
    max_mask_fraction: float = 0.5
    min_cases_per_class: int = 5          # classification: every class needs cases in train, val and test


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = 64
    us_median_kernel: int = 5
    mg_clahe_clip: float = 0.01
    mg_clahe_kernel: int = 32
    registration_iterations: int = 40
    registration_shrink: tuple[int, ...] = (4, 2, 1)
    workers: int = 1


@dataclass(frozen=True)
class ClsPreprocessConfig:
    image_size: int = 64
    equalize: str = "foreground"          # paper 002 section 3.2: histogram equalisation (foreground | global | none)
    workers: int = 1


@dataclass(frozen=True)
class RareDiseaseConfig:
    """Simulated classification datasets (paper 002 section 3.1): name -> {n_cases, prevalence}."""
    seed: int = 0
    size: int = 128
    workers: int = 1
    datasets: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "fusion_seg"
    modalities: tuple[str, ...] = MODALITIES
    fusion: str = "attention"
    channels: tuple[int, ...] = (8, 16, 32)
    residual_subunits: int = 2


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 8
    epochs: int = 3
    loss: str = "dice_bce"
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    scheduler: str = "cosine"
    seed: int = 0
    num_workers: int = 0
    amp: bool = True
    monitor: str = "val_dice"
    early_stopping: int = 0               # stop after this many epochs without a better monitor value (0: off)
    focal_gamma: float = 2.0              # focal loss (classification)
    class_weights: str = "none"           # none | inverse_frequency (classification)


@dataclass(frozen=True)
class EvaluateConfig:
    threshold: float = 0.5
    baseline: str = "otsu"


@dataclass(frozen=True)
class AblationConfig:
    """An ablation as data: factors with their levels, a baseline cell, the cells to run, seeds.

    A cell is a set of ``factor: level`` overrides of the baseline ({} = the baseline itself).
    """

    seeds: tuple[int, ...] = (1, 2, 3)
    epochs: int = 2
    factors: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)
    cells: dict = field(default_factory=dict)

    def check(self, family: str) -> None:
        """Fail before any training on an unknown factor or level, naming it."""
        where = f"params.yaml:ablation.{family}"
        if len(self.seeds) < 1:
            raise ConfigError(f"{where}.seeds", "no seeds", "list at least 3 seeds")
        for name, levels in [("baseline", self.baseline), *((f"cells.{c}", v or {}) for c, v in self.cells.items())]:
            for factor, level in levels.items():
                if factor not in self.factors:
                    raise ConfigError(f"{where}.{name}", f"unknown factor '{factor}'",
                                      f"use one of {sorted(self.factors)} or declare it under factors")
                if level not in self.factors[factor]:
                    raise ConfigError(f"{where}.{name}", f"unknown level '{level}' of factor '{factor}'",
                                      f"use one of {list(self.factors[factor])}")
        missing = set(self.factors) - set(self.baseline)
        if missing:
            raise ConfigError(f"{where}.baseline", f"no baseline level for {sorted(missing)}",
                              "give every factor a baseline level")

    def levels(self, cell: str) -> dict:
        if cell not in self.cells:
            raise ConfigError(f"cell '{cell}'", "not an ablation cell", f"use one of {list(self.cells)}")
        return {**self.baseline, **(self.cells[cell] or {})}

    def cell_train(self, cell: str, base: "TrainConfig", seed: int) -> "TrainConfig":
        """The training config of a cell: the ablation's epochs, the seed, and any factor named
        after a TrainConfig field (e.g. ``lr``) set to the cell's level."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        kw = {k: v for k, v in self.levels(cell).items() if k in names}
        return dataclasses.replace(base, epochs=self.epochs, seed=seed, **kw)

    def cell_model(self, cell: str, base):
        """The model config of a cell: factor levels named after model-config fields set to the cell's level
        (``modalities`` written ``us_mg`` becomes a tuple)."""
        names = {f.name for f in dataclasses.fields(base)}
        kw = {k: v for k, v in self.levels(cell).items() if k in names}
        if "modalities" in kw:
            kw["modalities"] = tuple(kw["modalities"].split("_"))
        return dataclasses.replace(base, **kw)

    def cell_dataset(self, cell: str, default: str) -> str:
        """The dataset a cell trains on (factor ``dataset``), else the family's."""
        return self.levels(cell).get("dataset", default)


@dataclass(frozen=True)
class PromoteConfig:
    metric: str = "dsc"
    floor: float = 0.5
    alpha: float = 0.05


@dataclass(frozen=True)
class FamilyConfig:
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ablation: AblationConfig = AblationConfig()
    promote: PromoteConfig = PromoteConfig()


@dataclass(frozen=True)
class ClsDataConfig:
    dataset: str = "gaucher-ct"           # target dataset (small, imbalanced)
    source: str = "rare-source"           # source domain for offline transfer (pretraining)


@dataclass(frozen=True)
class ClsModelConfig:
    arch: str = "transfer_cls"
    backbone: str = "densenet201"         # vgg16 | resnet50 | densenet201 | inception_v3
    strategy: str = "fine_tune"           # fine_tune | feature_extraction
    weights: str = "source"               # imagenet (local torch cache) | source (pretrained here) | none
    dropout: float = 0.3


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 15.0
    zoom: float = 0.1
    hflip: bool = True


@dataclass(frozen=True)
class PretrainConfig:
    backbones: tuple[str, ...] = ("densenet201",)
    epochs: int = 2
    lr: float = 3e-4
    batch_size: int = 32


@dataclass(frozen=True)
class ClsEvaluateConfig:
    bootstrap: int = 1000                 # resamples for the CIs of the test metrics
    gradcam_figure_cases: int = 6


@dataclass(frozen=True)
class ClsFamilyConfig:
    data: ClsDataConfig = ClsDataConfig()
    model: ClsModelConfig = ClsModelConfig()
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig = AugmentConfig()
    pretrain: PretrainConfig = PretrainConfig()
    evaluate: ClsEvaluateConfig = ClsEvaluateConfig()
    ablation: AblationConfig = AblationConfig()
    promote: PromoteConfig = PromoteConfig()


@dataclass(frozen=True)
class TrackingConfig:
    experiment_prefix: str = ""


@dataclass(frozen=True)
class Config:
    profile: str
    generate: GenerateConfig
    split: SplitConfig
    validate: ValidateConfig
    preprocess: PreprocessConfig
    families: dict[str, Any]
    tracking: TrackingConfig
    raw: dict  # the resolved params, logged whole to MLflow
    rare_disease: RareDiseaseConfig = RareDiseaseConfig()
    preprocess_cls: ClsPreprocessConfig = ClsPreprocessConfig()

    def family(self, name: str) -> FamilyConfig:
        if name not in self.families:
            raise ConfigError(f"family '{name}'", "not configured in params.yaml",
                              f"use one of {sorted(self.families)} or add a '{name}:' section")
        return self.families[name]


FAMILY_CONFIGS = {"fusion_seg": FamilyConfig, "transfer_cls": ClsFamilyConfig}
FAMILY_KEYS = tuple(FAMILY_CONFIGS)


def load_config(path: str | Path = "params.yaml", profile: str | None = None) -> Config:
    """Read params.yaml once and build the frozen, profile-resolved config."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(str(path), "parameters file not found", "run from the project root or pass --params")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML ({exc})", "fix the YAML syntax") from exc
    profile = profile or data.get("profile", "quick")
    if profile not in PROFILES:
        raise ConfigError(f"{path}:profile", f"unknown profile '{profile}'", f"use one of {PROFILES}")
    resolved = {k: _resolve(v, profile, k) for k, v in data.items() if k != "profile"}
    resolved["profile"] = profile
    families = {}
    for k in FAMILY_KEYS:
        if k in resolved:
            sec = dict(resolved[k])
            sec["ablation"] = resolved.get("ablation", {}).get(k, {})
            sec["promote"] = resolved.get("promote", {}).get(k, {})
            families[k] = _build(FAMILY_CONFIGS[k], sec, k)
            families[k].ablation.check(k)
    for fam in families.values():
        if not hasattr(fam.model, "modalities"):
            continue
        bad = set(fam.model.modalities) - set(MODALITIES)
        if bad or not fam.model.modalities:
            raise ConfigError("params.yaml:fusion_seg.model.modalities", f"unknown modality {sorted(bad)}",
                              f"choose a non-empty subset of {MODALITIES}")
    return Config(
        profile=profile,
        generate=_build(GenerateConfig, resolved.get("generate", {}), "generate"),
        split=_build(SplitConfig, resolved.get("split", {}), "split"),
        validate=_build(ValidateConfig, resolved.get("validate", {}), "validate"),
        preprocess=_build(PreprocessConfig, resolved.get("preprocess", {}), "preprocess"),
        families=families,
        tracking=_build(TrackingConfig, resolved.get("tracking", {}), "tracking"),
        raw=resolved,
        rare_disease=_build(RareDiseaseConfig, resolved.get("rare_disease", {}), "rare_disease"),
        preprocess_cls=_build(ClsPreprocessConfig, resolved.get("preprocess_cls", {}), "preprocess_cls"),
    )
