"""Configuration of the `transfer_cls` family (paper 002 + review 001): its simulated datasets
(`rare_disease:`), preprocessing (`preprocess_cls:`), data, model, training, pretraining, evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

from medops.config import AblationConfig, PromoteConfig, TrainConfig


@dataclass(frozen=True)
class RareDiseaseConfig:
    """Simulated classification datasets (paper 002 section 3.1): name -> {n_cases, prevalence}."""
    seed: int = 0
    size: int = 128
    workers: int = 1
    datasets: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Classification2DPreprocessConfig:
    """params.yaml `preprocess_cls:` — paper 002 section 3.2 for 2-D classification images."""
    image_size: int = 64
    equalize: str = "foreground"          # paper 002 section 3.2: histogram equalisation (foreground | global | none)
    workers: int = 1


@dataclass(frozen=True)
class TransferDataConfig:
    dataset: str = "gaucher-ct"           # target dataset (small, imbalanced)
    source: str = "rare-source"           # source domain for offline transfer (pretraining)


@dataclass(frozen=True)
class TransferModelConfig:
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
class TransferEvaluateConfig:
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
