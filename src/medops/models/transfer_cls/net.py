"""Transfer-learning classifiers on torchvision backbones (paper 002 section 3.3; review 001).

The backbone is torchvision's convolutional trunk of VGG16, ResNet50, DenseNet201 or
Inception-v3, taken by name; the head (global average pooling, dropout, linear) is sized
from the trunk's output channels, measured with a dummy forward pass — never hard-coded.
Strategies (paper 002 section 3.4): ``fine_tune`` trains every layer; ``feature_extraction``
freezes the trunk (weights and batch-norm statistics) and trains the head only.
Weights are handed in (this module reads no files): ``load_imagenet(state)`` takes torchvision's
ImageNet state dict, ``load_trunk(state)`` a source-domain checkpoint of the same backbone.
Inputs are images in [0, 1]; ImageNet normalisation happens inside the model, so exported
models take what the preprocessing writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from medops.errors import ConfigError
from medops.models.registry import register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    torchvision_name: str
    weights: str          # torchvision weights enum entry for ImageNet
    trunk: Callable[[nn.Module], nn.Module]
    min_size: int = 32    # smallest input the trunk accepts (inputs are upsampled to it)


def _vgg_trunk(m):
    return m.features


def _resnet_trunk(m):
    return nn.Sequential(*[c for n, c in m.named_children() if n not in ("avgpool", "fc")])


def _densenet_trunk(m):
    return nn.Sequential(m.features, nn.ReLU(inplace=False))


def _inception_trunk(m):
    names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
             "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
             "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
    return nn.Sequential(*[getattr(m, n) for n in names])


BACKBONES = {
    "vgg16": Backbone("vgg16", "VGG16_Weights.IMAGENET1K_V1", _vgg_trunk),
    "resnet50": Backbone("resnet50", "ResNet50_Weights.IMAGENET1K_V2", _resnet_trunk),
    "densenet201": Backbone("densenet201", "DenseNet201_Weights.IMAGENET1K_V1", _densenet_trunk),
    "inception_v3": Backbone("inception_v3", "Inception_V3_Weights.IMAGENET1K_V1", _inception_trunk, min_size=75),
}
STRATEGIES = ("fine_tune", "feature_extraction")
WEIGHTS = ("imagenet", "source", "none")




class TransferClassifier(nn.Module):
    """Backbone trunk + head sized from it.

    Args:
        backbone: one of ``BACKBONES`` (vgg16, resnet50, densenet201, inception_v3).
        num_classes: output classes (from the dataset's class list).
        strategy: ``fine_tune`` or ``feature_extraction`` (frozen trunk).
        dropout: dropout before the linear layer.

    Example:
        >>> net = TransferClassifier("resnet50", num_classes=2)
        >>> net(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 2])
    """

    gradcam_layer = "trunk"  # Grad-CAM on the last convolutional feature map of every backbone

    def __init__(self, backbone: str, num_classes: int, strategy: str = "fine_tune", dropout: float = 0.3):
        super().__init__()
        if backbone not in BACKBONES:
            raise ConfigError(f"backbone '{backbone}'", "not an available backbone", f"use one of {sorted(BACKBONES)}")
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy '{strategy}'", "unknown transfer strategy", f"use one of {list(STRATEGIES)}")
        spec = BACKBONES[backbone]
        kw = {"aux_logits": False, "init_weights": True} if backbone == "inception_v3" else {}
        full = torchvision.models.get_model(spec.torchvision_name, weights=None, **kw)
        self.backbone_name, self.strategy, self.min_size = backbone, strategy, spec.min_size
        self.trunk = spec.trunk(full)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():  # the head is sized from what the trunk actually outputs
            self.trunk.eval()
            in_features = self.trunk(torch.zeros(1, 3, spec.min_size, spec.min_size)).shape[1]
            self.trunk.train()
        self.in_features = int(in_features)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(self.in_features, num_classes))
        # the full torchvision model shares the trunk's modules: kept (unregistered, so it is neither
        # trained nor saved nor exported) only to load ImageNet state dicts by their torchvision names
        self.__dict__["_full"] = full
        self.set_strategy(strategy)

    def load_imagenet(self, state: dict) -> None:
        """Load torchvision's ImageNet state dict of this backbone (read by the caller) into the trunk."""
        missing, _ = self._full.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith(("fc.", "classifier.", "AuxLogits."))]
        if bad:
            raise ConfigError(f"ImageNet weights of {self.backbone_name}", f"do not fit the trunk (missing {bad[:3]})",
                              "delete the cached file and fetch it again")

    def load_trunk(self, state: dict) -> None:
        """Load a trunk pretrained elsewhere (the source-domain checkpoint); the head stays new."""
        trunk = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
        if not trunk:
            raise ConfigError("source checkpoint", "holds no trunk weights", "re-run the pretraining stage")
        self.trunk.load_state_dict(trunk)

    def set_strategy(self, strategy: str) -> None:
        self.strategy = strategy
        for p in self.trunk.parameters():
            p.requires_grad_(strategy == "fine_tune")

    def train(self, mode: bool = True):
        super().train(mode)
        if self.strategy == "feature_extraction":
            self.trunk.eval()  # frozen trunk: batch-norm statistics stay those of the pretrained model
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.min_size or x.shape[-2] < self.min_size:
            x = F.interpolate(x, size=(max(self.min_size, x.shape[-2]), max(self.min_size, x.shape[-1])),
                              mode="bilinear", align_corners=False)
        return self.trunk((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("transfer_cls")
def build_transfer_cls(*, backbone: str, num_classes: int, strategy: str = "fine_tune", weights: str = "none",
                       dropout: float = 0.3) -> TransferClassifier:
    """Build the classifier with fresh weights. ``weights`` (imagenet | source | none) names the starting
    weights the caller loads afterwards (:meth:`TransferClassifier.load_imagenet` / ``load_trunk``):
    this module reads no files."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights '{weights}'", "unknown weights", f"use one of {list(WEIGHTS)}")
    return TransferClassifier(backbone, num_classes, strategy, dropout)
