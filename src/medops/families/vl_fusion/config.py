"""Configuration of the `vl_fusion` family (paper 003 on chest radiographs and reports): the simulated
radiographs and reports (`cxr_reports:`), the image and text preprocessing (`preprocess_vl:`), data, model,
loss, training, evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from medops.config import AblationConfig, PromoteConfig, TrainConfig
from medops.errors import ConfigError

FUSIONS = ("cross", "concat", "visual", "text", "early")
ARCHS = ("vl_fusion", "vl_lstm_attention")
TRUNKS = {"densenet121": ((6, 12, 24, 16), 32, 64)}   # block_config, growth_rate, init_features (torchvision)


@dataclass(frozen=True)
class CxrReportsConfig:
    """params.yaml `cxr_reports:` — simulated PA radiographs and five reports each (medops.data.cxr_sim)."""
    RULES: ClassVar[dict] = {"n_cases": "[10, 1000000]", "size": "[32, 2048]", "reports_per_image": "[1, 20]",
                             "workers": "[1, 64]"}
    seed: int = 0
    n_cases: int = 40
    size: int = 128                       # stored radiograph size (px)
    reports_per_image: int = 5            # reference reports per image (COCO Caption has five)
    prevalence: dict = field(default_factory=dict)   # finding -> share of patients (default: cxr_sim.PREVALENCE)
    workers: int = 1

    def check_values(self, where: str) -> None:
        if not self.prevalence:     # (every stage of every family builds this section: import the simulator only
            return                  # when there is something to check)
        from medops.data.cxr_sim import FINDINGS

        for f, p in self.prevalence.items():
            if f not in FINDINGS:
                raise ConfigError(f"params.yaml:{where}.prevalence.{f}", "unknown finding", f"use one of {list(FINDINGS)}")
            if not (isinstance(p, (int, float)) and 0 <= p <= 1):
                raise ConfigError(f"params.yaml:{where}.prevalence.{f}", f"{p!r} is not in [0, 1]", "a share, e.g. 0.2")


@dataclass(frozen=True)
class VLPreprocessConfig:
    """params.yaml `preprocess_vl:` — images as for any 2-D classification set; the report tokenizer."""
    RULES: ClassVar[dict] = {"image_size": "[32, 2048]", "equalize": ("foreground", "global", "none"),
                             "workers": "[1, 64]", "vocab_size": "[64, 100000]", "min_frequency": "[1, 1000]",
                             "max_len": "[8, 1024]"}
    image_size: int = 64
    equalize: str = "none"                # radiographs are shown as acquired (no histogram equalisation)
    workers: int = 1
    vocab_size: int = 1000                # WordPiece vocabulary trained on the training split's reports
    min_frequency: int = 2
    max_len: int = 96                     # tokens per report ([BOS] ... [EOS]); longer ones are truncated, counted


@dataclass(frozen=True)
class VLModelConfig:
    RULES: ClassVar[dict] = {"arch": ARCHS, "fusion": FUSIONS, "text_encoder": ("albert", "minilm"),
                             "trunk": ("densenet121", "small"), "trunk_weights": ("imagenet", "source", "none"),
                             "width": "[8, 4096]", "heads": "[1, 64]", "cross_layers": "[1, 24]",
                             "decoder_layers": "[1, 24]", "embed_dim": "[4, 4096]", "dropout": "[0, 1)",
                             "prompt_len": "[1, 64]"}
    arch: str = "vl_fusion"               # vl_fusion | vl_lstm_attention (the paper's LSTM-Attention baseline)
    fusion: str = "cross"                 # cross (the paper) | concat | visual | text | early (M4C stand-in)
    use_cbam: bool = True
    trunk: str = "densenet121"            # densenet121 (the paper) | small (small_blocks, for CPU profiles)
    trunk_weights: str = "imagenet"       # imagenet: DenseNet121's from the local torch cache when present, else the
                                          # source-domain trunk (`--pretrain trunk`) when trained, else random |
                                          # source: the source-domain trunk (required) | none: random
    small_blocks: tuple = (2, 4, 6, 4)    # the small trunk's DenseNet blocks
    small_growth: int = 16
    text_encoder: str = "albert"          # albert (random init, config below) | minilm (pretrained, offline; BERT-style)
    minilm_finetune: bool = True          # minilm: train its weights too (False: a frozen feature extractor)
    albert: dict = field(default_factory=lambda: {"embedding_size": 64, "hidden_size": 128, "num_hidden_layers": 2,
                                                   "num_attention_heads": 4, "intermediate_size": 256})
    width: int = 128                      # fusion width (image tokens, text tokens, decoder)
    heads: int = 4                        # cross-attention heads
    cross_layers: int = 1
    decoder_layers: int = 2
    embed_dim: int = 64                   # matching features f(I), g(T) of Eq. 2
    dropout: float = 0.1
    prompt: str = "PA chest radiograph"   # the text the generation and triage paths fuse with the image
    prompt_len: int = 8


@dataclass(frozen=True)
class VLLossConfig:
    RULES: ClassVar[dict] = {"margin": "(0, 4]"}
    lambda_ce: float = 1.0                # Eq. 4: triage cross-entropy (Eq. 1)
    lambda_cl: float = 1.0                # contrastive matching loss (Eq. 2)
    lambda_seq: float = 1.0               # report generation (Eq. 3)
    margin: float = 0.5                   # m of Eq. 2 (distances of L2-normalised features lie in [0, 2])


@dataclass(frozen=True)
class VLEvaluateConfig:
    RULES: ClassVar[dict] = {"beam": "[1, 16]", "max_len": "[4, 1024]", "attention_figure_cases": "[0, 32]",
                             "bootstrap": "[0, inf)"}
    beam: int = 3                         # beam search width for the reported reports (1: greedy)
    max_len: int = 96                     # tokens generated at most
    attention_figure_cases: int = 4
    bootstrap: int = 1000


@dataclass(frozen=True)
class VLPretrainConfig:
    """`vl_fusion.pretrain` — source-domain pretraining of the image trunk (`medops train vl_fusion --pretrain
    trunk`): the whole model trained from scratch with Eq. 4 on a larger simulated radiograph set (new
    patients, its own seed), of which the trunk's weights start every later run — what `transfer_cls` does
    for its backbones, for when no ImageNet weights are in the local torch cache."""
    RULES: ClassVar[dict] = {"epochs": "[1, 10000]", "lr": "(0, 1)", "batch_size": "[1, 4096]"}
    backbones: tuple = ("trunk",)         # `trunk`: the image trunk the profile's model uses (vl_fusion.model.trunk);
                                          # a list because the Airflow DAG and Kubeflow pipeline read it as for transfer_cls
    dataset: str = "cxr-source"           # the source set (params.yaml `cxr_source:`)
    epochs: int = 3
    lr: float = 0.002
    batch_size: int = 16

    def check_values(self, where: str) -> None:
        if tuple(self.backbones) != ("trunk",):
            raise ConfigError(f"params.yaml:{where}.backbones", f"{list(self.backbones)} is not allowed",
                              "use [trunk]: the trunk of vl_fusion.model.trunk (trunk_weights: none starts the "
                              "runs from random weights instead)")


@dataclass(frozen=True)
class VLFusionConfig:
    """params.yaml `vl_fusion:` (+ `ablation.vl_fusion`, `promote.vl_fusion`)."""
    dataset: str = "cxr-reports"
    model: VLModelConfig = VLModelConfig()
    loss: VLLossConfig = VLLossConfig()
    train: TrainConfig = TrainConfig()
    evaluate: VLEvaluateConfig = VLEvaluateConfig()
    ablation: AblationConfig = AblationConfig()
    promote: PromoteConfig = PromoteConfig()
    pretrain: VLPretrainConfig = VLPretrainConfig()
