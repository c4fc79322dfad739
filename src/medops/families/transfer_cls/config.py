"""Configuration of the `transfer_cls` family (paper 002 + review 001): its simulated datasets
(`rare_disease:`), preprocessing (`preprocess_cls:`), data, model, training, pretraining, evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from medops.config import AblationConfig, PromoteConfig, TrainConfig
from medops.errors import ConfigError

BACKBONES = ("vgg16", "resnet50", "densenet201", "inception_v3")


@dataclass(frozen=True)
class RareDiseaseConfig:
    """Simulated classification datasets (paper 002 section 3.1): name -> {n_cases, prevalence, test_cases}."""
    RULES: ClassVar[dict] = {"size": "[32, 2048]", "workers": "[1, 64]"}
    seed: int = 0
    size: int = 128
    workers: int = 1
    datasets: dict = field(default_factory=dict)

    def check_values(self, where: str) -> None:
        for name, spec in self.datasets.items():
            spec = spec if isinstance(spec, dict) else {}
            n, prev, extra = spec.get("n_cases"), spec.get("prevalence", 0.5), spec.get("test_cases", 0)
            ok_int = lambda v, lo: isinstance(v, int) and not isinstance(v, bool) and v >= lo  # noqa: E731
            if not (ok_int(n, 10) and ok_int(extra, 0)) or set(spec) - {"n_cases", "prevalence", "test_cases"}:
                raise ConfigError(f"params.yaml:{where}.datasets.{name}", f"{spec!r}: needs n_cases (an integer >= 10) "
                                  "and optionally prevalence and test_cases (extra test-only cases, an integer >= 0)",
                                  "e.g. {n_cases: 150, prevalence: 0.2, test_cases: 200}")
            if not (isinstance(prev, (int, float)) and 0 < prev < 1):
                raise ConfigError(f"params.yaml:{where}.datasets.{name}.prevalence", f"{prev!r} is not in (0, 1)",
                                  "the share of disease cases, e.g. 0.2")


@dataclass(frozen=True)
class Classification2DPreprocessConfig:
    """params.yaml `preprocess_cls:` — paper 002 section 3.2 for 2-D classification images."""
    RULES: ClassVar[dict] = {"image_size": "[32, 2048]", "equalize": ("foreground", "global", "none"), "workers": "[1, 64]"}
    image_size: int = 64
    equalize: str = "foreground"          # paper 002 section 3.2: histogram equalisation (foreground | global | none)
    workers: int = 1


@dataclass(frozen=True)
class TransferDataConfig:
    dataset: str = "gaucher-ct"           # target dataset (small, imbalanced)
    source: str = "rare-source"           # source domain for offline transfer (pretraining)


@dataclass(frozen=True)
class TransferModelConfig:
    RULES: ClassVar[dict] = {"backbone": BACKBONES, "strategy": ("fine_tune", "feature_extraction"),
                             "weights": ("imagenet", "source", "none"), "dropout": "[0, 1)"}
    arch: str = "transfer_cls"
    backbone: str = "densenet201"         # vgg16 | resnet50 | densenet201 | inception_v3
    strategy: str = "fine_tune"           # fine_tune | feature_extraction
    weights: str = "source"               # imagenet (local torch cache) | source (pretrained here) | none
    dropout: float = 0.3


@dataclass(frozen=True)
class AugmentConfig:
    RULES: ClassVar[dict] = {"rotation_deg": "[0, 180]", "zoom": "[0, 1)"}
    rotation_deg: float = 15.0
    zoom: float = 0.1
    hflip: bool = True


@dataclass(frozen=True)
class PretrainConfig:
    RULES: ClassVar[dict] = {"backbones": BACKBONES, "epochs": "[1, inf)", "lr": "(0, inf)", "batch_size": "[1, inf)"}
    backbones: tuple[str, ...] = ("densenet201",)
    epochs: int = 2
    lr: float = 3e-4
    batch_size: int = 32


@dataclass(frozen=True)
class TransferEvaluateConfig:
    RULES: ClassVar[dict] = {"bootstrap": "[0, inf)", "gradcam_figure_cases": "[0, 64]"}
    bootstrap: int = 1000                 # resamples for the CIs of the test metrics
    gradcam_figure_cases: int = 6


@dataclass(frozen=True)
class TransferClsConfig:
    """params.yaml `transfer_cls:` (+ `ablation.transfer_cls`, `promote.transfer_cls`)."""
    data: TransferDataConfig = TransferDataConfig()
    model: TransferModelConfig = TransferModelConfig()
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig = AugmentConfig()
    pretrain: PretrainConfig = PretrainConfig()
    evaluate: TransferEvaluateConfig = TransferEvaluateConfig()
    ablation: AblationConfig = AblationConfig()
    promote: PromoteConfig = PromoteConfig()
