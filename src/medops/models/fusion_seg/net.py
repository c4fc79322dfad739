"""Attention-fusion multi-modal segmentation network (paper 000, section 3.3).

One residual U-Net encoder per modality; at every scale the modality feature
maps are fused by a registered fusion block (``attention``: channel-wise
attention weights per modality and channel, then an attention-weighted
concatenation; ``concat``: plain feature concatenation); a shared decoder of
transposed convolutions with skip connections to the fused features produces
one logit map (apply a sigmoid for the mask).

Example:
    >>> import torch
    >>> net = FusionSegNet(in_modalities=("us", "mg", "mri"), modalities=("us", "mri"), channels=(8, 16, 32))
    >>> net(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import ResidualUnit

from medops.errors import ConfigError
from medops.models.registry import register_model

ALL_MODALITIES = ("us", "mg", "mri")


class AttentionFusion(nn.Module):
    """Channel-wise attention across modalities (squeeze-excitation over the stacked modalities).

    Weights ``w[b, m, c]`` sum to 1 over modalities ``m`` for every channel
    ``c``; the weighted feature maps are concatenated and mixed by a 1x1 conv.
    """

    def __init__(self, n_modalities: int, channels: int, reduction: int = 4):
        super().__init__()
        self.m, self.c = n_modalities, channels
        hidden = max(n_modalities * channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Linear(n_modalities * channels, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, n_modalities * channels))
        self.mix = nn.Conv2d(n_modalities * channels, channels, kernel_size=1)
        self.last_weights: torch.Tensor | None = None

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(feats, dim=1)                               # B, M, C, H, W
        squeeze = x.mean(dim=(3, 4)).flatten(1)                     # B, M*C
        w = torch.softmax(self.mlp(squeeze).view(-1, self.m, self.c), dim=1)
        if not torch.compiler.is_compiling():  # kept for logging, not part of an exported graph
            self.last_weights = w.detach()
        weighted = x * w[..., None, None]
        return self.mix(weighted.flatten(1, 2))


class ConcatFusion(nn.Module):
    """Plain feature-level fusion: concatenate modality features, mix with a 1x1 conv."""

    def __init__(self, n_modalities: int, channels: int):
        super().__init__()
        self.mix = nn.Conv2d(n_modalities * channels, channels, kernel_size=1)
        self.last_weights = None

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.mix(torch.cat(feats, dim=1))


class PassThrough(nn.Module):
    """Early fusion: the modalities were stacked at the input, there is one feature map per scale."""

    def __init__(self, n_modalities: int, channels: int):
        super().__init__()
        self.last_weights = None

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return feats[0]


# feature-level fusion blocks, applied at every scale
FUSIONS: dict[str, type[nn.Module]] = {"attention": AttentionFusion, "concat": ConcatFusion, "early": PassThrough}
# all fusion strategies of the family ("late" combines whole per-modality networks, see LateFusionNet)
STRATEGIES = (*FUSIONS, "late")


class Encoder(nn.Module):
    """U-Net encoder with residual blocks (MONAI ``ResidualUnit``); returns one map per scale."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], subunits: int):
        super().__init__()
        stages, c_in = [], in_channels
        for i, c in enumerate(channels):
            stages.append(ResidualUnit(spatial_dims=2, in_channels=c_in, out_channels=c, strides=1 if i == 0 else 2,
                                       subunits=subunits, norm="batch", act="relu"))
            c_in = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        return feats


class FusionSegNet(nn.Module):
    """Multi-modal segmentation network.

    Args:
        in_modalities: channel order of the input tensor (the preprocessed stack).
        modalities: the subset this model uses (one encoder each).
        fusion: name of a block in :data:`FUSIONS`.
        channels: feature channels per scale (input size must be divisible by 2**(len-1)).
        residual_subunits: convolutions per residual block.
    """

    def __init__(self, *, in_modalities=ALL_MODALITIES, modalities=ALL_MODALITIES, fusion: str = "attention",
                 channels=(16, 32, 64, 128), residual_subunits: int = 2):
        super().__init__()
        unknown = set(modalities) - set(in_modalities)
        if unknown or not modalities:
            raise ConfigError("fusion_seg.model.modalities", f"unknown modality {sorted(unknown)}",
                              f"choose a non-empty subset of {list(in_modalities)}")
        if fusion not in FUSIONS:
            raise ConfigError("fusion_seg.model.fusion", f"unknown fusion '{fusion}'", f"use one of {sorted(STRATEGIES)}")
        self.modalities, self.early = tuple(modalities), fusion == "early"
        self.index = tuple(list(in_modalities).index(m) for m in modalities)
        if self.early:  # one encoder over the stacked modalities
            self.encoders = nn.ModuleDict({"stack": Encoder(len(modalities), tuple(channels), residual_subunits)})
        else:
            self.encoders = nn.ModuleDict({m: Encoder(1, tuple(channels), residual_subunits) for m in modalities})
        self.fusions = nn.ModuleList([FUSIONS[fusion](len(modalities), c) for c in channels])
        ups, decs = [], []
        for c_hi, c_lo in zip(channels[::-1][:-1], channels[::-1][1:]):
            ups.append(nn.ConvTranspose2d(c_hi, c_lo, kernel_size=2, stride=2))
            decs.append(ResidualUnit(spatial_dims=2, in_channels=2 * c_lo, out_channels=c_lo, strides=1,
                                     subunits=1, norm="batch", act="relu"))
        self.ups, self.decs = nn.ModuleList(ups), nn.ModuleList(decs)
        self.head = nn.Conv2d(channels[0], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.early:
            per_mod = [self.encoders["stack"](x[:, list(self.index)])]
        else:
            per_mod = [self.encoders[m](x[:, i:i + 1]) for m, i in zip(self.modalities, self.index)]
        fused = [f([p[level] for p in per_mod]) for level, f in enumerate(self.fusions)]
        y = fused[-1]
        for up, dec, skip in zip(self.ups, self.decs, fused[-2::-1]):
            y = dec(torch.cat([up(y), skip], dim=1))
        return self.head(y)

    def attention_weights(self) -> dict[str, float]:
        """Mean attention weight per modality at each scale from the last forward pass."""
        out = {}
        for level, f in enumerate(self.fusions):
            if getattr(f, "last_weights", None) is not None:
                w = f.last_weights.mean(dim=(0, 2))
                for m, v in zip(self.modalities, w.tolist()):
                    out[f"attn_l{level}_{m}"] = v
        return out

    def attention_weights_full(self) -> dict[str, list]:
        """Per-modality, per-channel weights (batch mean) at each scale, for logging as an artifact."""
        return {f"level_{i}": f.last_weights.mean(0).tolist() for i, f in enumerate(self.fusions)
                if getattr(f, "last_weights", None) is not None}


class LateFusionNet(nn.Module):
    """Late fusion: one full single-modality network per modality; their probability maps are
    combined with learned (softmax) weights. Returns logits of the combined probability."""

    def __init__(self, *, in_modalities=ALL_MODALITIES, modalities=ALL_MODALITIES, channels=(16, 32, 64, 128),
                 residual_subunits: int = 2):
        super().__init__()
        self.modalities = tuple(modalities)
        self.nets = nn.ModuleList([FusionSegNet(in_modalities=in_modalities, modalities=(m,), fusion="concat",
                                                channels=channels, residual_subunits=residual_subunits)
                                   for m in modalities])
        self.logit_weights = nn.Parameter(torch.zeros(len(modalities)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.sigmoid(n(x)) for n in self.nets], dim=0)
        w = torch.softmax(self.logit_weights, dim=0)
        p = (w[:, None, None, None, None] * probs).sum(0).clamp(1e-6, 1 - 1e-6)
        return torch.logit(p)

    def attention_weights(self) -> dict[str, float]:
        w = torch.softmax(self.logit_weights.detach(), dim=0)
        return {f"late_w_{m}": float(v) for m, v in zip(self.modalities, w)}


@register_model("fusion_seg")
def build(*, modalities=ALL_MODALITIES, fusion="attention", channels=(16, 32, 64, 128), residual_subunits=2,
          in_modalities=ALL_MODALITIES) -> nn.Module:
    """Build a ``fusion_seg`` network; ``fusion`` is one of :data:`STRATEGIES`."""
    if fusion == "late":
        return LateFusionNet(in_modalities=in_modalities, modalities=modalities, channels=channels,
                             residual_subunits=residual_subunits)
    return FusionSegNet(in_modalities=in_modalities, modalities=modalities, fusion=fusion, channels=channels,
                        residual_subunits=residual_subunits)
