"""3-D networks of paper 004 (Gou et al., ITC 2024), from MONAI building blocks.

Every model takes the same input, the preprocessed cube around a nodule centre ``(B, 1, C, C, C)``
with HU windowed to [0, 1], and returns 2-class logits (benign, malignant); a model that looks at a
smaller scale centre-crops the cube itself, so one dataset serves every model of the ablation.

* :class:`SubNet3D` — the paper's lightweight sub-network (sections 3.2.2 and 4.1, Table 3): two
  convolutions, max pooling, four residual blocks, global average pooling, a hidden layer of 486
  units, dropout 0.5, the output layer; ten convolutional layers in all.
* :class:`MultiScaleEnsemble` — three identical sub-networks on 32/48/64-voxel crops combined as
  ``w0 F32 + w1 F48 + w2 F64`` (Eq. 4) on their malignant probabilities. The weights live in a buffer
  (saved with the model) and are chosen by a grid search on the simplex over the *validation* cases
  (:func:`simplex_grid`, set by the training hooks after every validation pass).
* :class:`IFM` — the paper's image fusion ("compensation") model, sections 3.2.1-3.2.5. The text leaves
  much open; the choices (documented in the README, "nodule3d: what the IFM text leaves open"):
  the macro channel (OA) sees the whole cube average-pooled to half size, the micro channel (DT) the
  central half-size crop at full resolution, the general channel the 3/4 crop resized to half size;
  the cross-residual feature extraction (CRFE) gives each channel ``ReLU(MaxPool(Conv(ReLU(Up(Conv(others))))))``
  as a residual; the channels are concatenated and fused by a 1x1x1 convolution; the residual attention
  module (RAM) is Wang et al.'s ``f * (1 + sigmoid(M(f)))`` with a down-up mask branch; then the same four
  residual blocks, pooling and head as the sub-network. ``branches`` keeps a subset of channels (ablation).
* MONAI's 3-D ResNet and DenseNet as baselines (``monai_resnet3d``, ``monai_densenet3d``).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit

from medops.models.registry import register_model


def center_crop3d(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size``^3 voxels of ``(B, C, D, H, W)``."""
    if x.shape[-1] == size and x.shape[-2] == size and x.shape[-3] == size:
        return x
    o = [(s - size) // 2 for s in x.shape[-3:]]
    if min(o) < 0:
        raise ValueError(f"input cube {tuple(x.shape[-3:])} is smaller than the crop {size}")
    return x[..., o[0]:o[0] + size, o[1]:o[1] + size, o[2]:o[2] + size]


def simplex_grid(n: int, step: float = 0.1) -> torch.Tensor:
    """All weight vectors of length ``n`` on the simplex with the given step (rows sum to 1)."""
    k = int(round(1 / step))
    rows = [c for c in itertools.product(range(k + 1), repeat=n) if sum(c) == k]
    return torch.tensor(rows, dtype=torch.float32) / k


def _stem(in_ch: int, ch: int) -> nn.Sequential:
    return nn.Sequential(Convolution(3, in_ch, ch, kernel_size=3, norm="batch", act="relu"),
                         Convolution(3, ch, ch, kernel_size=3, norm="batch", act="relu"), nn.MaxPool3d(2))


def _res_blocks(ch: tuple[int, ...]) -> nn.Sequential:
    """Four residual blocks (MONAI ``ResidualUnit``, two convolutions each); the first keeps the size."""
    return nn.Sequential(*[ResidualUnit(3, a, b, strides=1 if i == 0 else 2, subunits=2, norm="batch", act="relu")
                           for i, (a, b) in enumerate(zip(ch[:-1], ch[1:]))])


def _head(ch: int, hidden: int, dropout: float, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(ch, hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden, num_classes))


class SubNet3D(nn.Module):
    """One sub-network on the central ``scale``^3 crop. ``channels``: stem width then the four blocks' widths."""

    def __init__(self, scale: int, channels=(16, 32, 64, 64, 128), hidden: int = 486, dropout: float = 0.5,
                 num_classes: int = 2):
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"channels needs 5 widths (stem + four residual blocks), got {list(channels)}")
        self.scale = int(scale)
        self.gradcam_layer = "blocks"
        self.stem = _stem(1, channels[0])
        self.blocks = _res_blocks(tuple(channels))
        self.head = _head(channels[-1], hidden, dropout, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(center_crop3d(x, self.scale))))


class MultiScaleEnsemble(nn.Module):
    """Eq. 4: ``sum_s w_s softmax(F_s(x))``, returned as log-probabilities (softmax of the output = the ensemble)."""

    def __init__(self, scales=(32, 48, 64), channels=(16, 32, 64, 64, 128), hidden: int = 486, dropout: float = 0.5,
                 num_classes: int = 2):
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        self.subnets = nn.ModuleList([SubNet3D(s, channels, hidden, dropout, num_classes) for s in self.scales])
        self.register_buffer("weights", torch.full((len(self.scales),), 1.0 / len(self.scales)))
        self.gradcam_layer = f"subnets.{len(self.scales) - 1}.blocks"      # the largest scale sees the whole cube

    def forward_all(self, x) -> list[torch.Tensor]:
        return [net(x) for net in self.subnets]

    def combine(self, logits: list[torch.Tensor]) -> torch.Tensor:
        p = sum(w * torch.softmax(lg.float(), 1) for w, lg in zip(self.weights, logits))
        return torch.log(p.clamp_min(1e-7))

    def forward(self, x):
        return self.combine(self.forward_all(x))


class _CRFE(nn.Module):
    """Cross residual feature extraction: a residual for one channel computed from the other channels."""

    def __init__(self, ch: int, n_others: int):
        super().__init__()
        self.inter = nn.Sequential(nn.Conv3d(ch * n_others, ch, 3, padding=1), nn.Upsample(scale_factor=2), nn.ReLU())
        self.back = nn.Sequential(nn.Conv3d(ch, ch, 3, padding=1), nn.MaxPool3d(2), nn.ReLU())

    def forward(self, x, others):
        return x + self.back(self.inter(torch.cat(others, 1)))


class _RAM(nn.Module):
    """Residual attention (Wang et al. 2017): ``f * (1 + sigmoid(M(f)))``, M a down-up mask branch."""

    def __init__(self, ch: int):
        super().__init__()
        self.mask = nn.Sequential(nn.MaxPool3d(2), Convolution(3, ch, ch, kernel_size=3, norm="batch", act="relu"),
                                  nn.Upsample(scale_factor=2, mode="trilinear"), nn.Conv3d(ch, ch, 1), nn.Sigmoid())

    def forward(self, f):
        return f * (1 + self.mask(f))


class IFM(nn.Module):
    """The image fusion model on a ``cube``^3 input: macro / micro / general channels at ``cube // 2``."""

    BRANCHES = ("macro", "micro", "general")

    def __init__(self, cube: int = 64, branches=BRANCHES, channels=(16, 32, 64, 64, 128), hidden: int = 486,
                 dropout: float = 0.5, num_classes: int = 2):
        super().__init__()
        bad = set(branches) - set(self.BRANCHES)
        if bad or not branches:
            raise ValueError(f"IFM branches {list(branches)}: use a non-empty subset of {list(self.BRANCHES)}")
        self.cube, self.branches = int(cube), tuple(branches)
        self.gradcam_layer = "blocks"
        self.half = self.cube // 2
        c = channels[0]
        self.stems = nn.ModuleDict({b: _stem(1, c) for b in self.branches})
        self.crfe = nn.ModuleDict({b: _CRFE(c, len(self.branches) - 1) for b in self.branches}) \
            if len(self.branches) > 1 else None
        self.fuse = Convolution(3, c * len(self.branches), c, kernel_size=1, norm="batch", act="relu")
        self.ram = _RAM(c)
        self.blocks = _res_blocks(tuple(channels))
        self.head = _head(channels[-1], hidden, dropout, num_classes)

    def _view(self, x, b):
        x = center_crop3d(x, self.cube)
        if b == "macro":
            return F.adaptive_avg_pool3d(x, self.half)
        if b == "micro":
            return center_crop3d(x, self.half)
        return F.interpolate(center_crop3d(x, 3 * self.cube // 4), size=(self.half,) * 3, mode="trilinear",
                             align_corners=False)

    def forward(self, x):
        f = {b: self.stems[b](self._view(x, b)) for b in self.branches}
        if self.crfe is not None:
            f = {b: self.crfe[b](f[b], [f[o] for o in self.branches if o != b]) for b in self.branches}
        g = self.ram(self.fuse(torch.cat([f[b] for b in self.branches], 1)))
        return self.head(self.blocks(g))


@register_model("nodule3d_subnet")
def nodule3d_subnet(*, scale: int = 32, channels=(16, 32, 64, 64, 128), hidden: int = 486, dropout: float = 0.5,
                    num_classes: int = 2) -> nn.Module:
    return SubNet3D(scale, tuple(channels), hidden, dropout, num_classes)


@register_model("nodule3d_ensemble")
def nodule3d_ensemble(*, scales=(32, 48, 64), channels=(16, 32, 64, 64, 128), hidden: int = 486,
                      dropout: float = 0.5, num_classes: int = 2) -> nn.Module:
    return MultiScaleEnsemble(tuple(scales), tuple(channels), hidden, dropout, num_classes)


@register_model("nodule3d_ifm")
def nodule3d_ifm(*, cube: int = 64, branches=IFM.BRANCHES, channels=(16, 32, 64, 64, 128), hidden: int = 486,
                 dropout: float = 0.5, num_classes: int = 2) -> nn.Module:
    return IFM(cube, tuple(branches), tuple(channels), hidden, dropout, num_classes)


class _Cropped(nn.Module):
    def __init__(self, net: nn.Module, scale: int, gradcam_layer: str):
        super().__init__()
        self.net, self.scale, self.gradcam_layer = net, int(scale), gradcam_layer

    def forward(self, x):
        return self.net(center_crop3d(x, self.scale))


@register_model("monai_resnet3d")
def monai_resnet3d(*, scale: int = 64, layers=(1, 1, 1, 1), widths=(32, 64, 128, 256), num_classes: int = 2) -> nn.Module:
    """MONAI's 3-D ResNet (Hara et al. 2018; ``layers`` (1, 1, 1, 1) is ResNet-10) on the central ``scale``^3 crop."""
    from monai.networks.nets import ResNet

    return _Cropped(ResNet("basic", list(layers), list(widths), spatial_dims=3, n_input_channels=1,
                           num_classes=num_classes), scale, "net.layer4")


@register_model("monai_densenet3d")
def monai_densenet3d(*, scale: int = 64, init_features: int = 16, growth_rate: int = 8,
                     block_config=(2, 4, 6, 4), num_classes: int = 2) -> nn.Module:
    """MONAI's 3-D DenseNet (Huang et al. 2017) on the central ``scale``^3 crop."""
    from monai.networks.nets import DenseNet

    return _Cropped(DenseNet(spatial_dims=3, in_channels=1, out_channels=num_classes, init_features=init_features,
                             growth_rate=growth_rate, block_config=tuple(block_config)), scale, "net.features")
