"""Classic baselines from review 001 on the stacked modalities: MONAI U-Net and Attention U-Net."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import AttentionUnet, UNet

from medops.errors import ConfigError
from medops.models.registry import register_model

ALL_MODALITIES = ("us", "mg", "mri")


class StackedInput(nn.Module):
    """Select the configured modalities from the input stack, then run a single-input network."""

    def __init__(self, net: nn.Module, index: tuple[int, ...]):
        super().__init__()
        self.net, self.index = net, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, list(self.index)])


def _index(in_modalities, modalities):
    bad = set(modalities) - set(in_modalities)
    if bad or not modalities:
        raise ConfigError("model.modalities", f"unknown modality {sorted(bad)}", f"choose from {list(in_modalities)}")
    return tuple(list(in_modalities).index(m) for m in modalities)


@register_model("unet")
def unet(*, modalities=ALL_MODALITIES, channels=(16, 32, 64, 128), residual_subunits=2,
         in_modalities=ALL_MODALITIES, **_ignored) -> nn.Module:
    """U-Net (Ronneberger 2015) with residual units, MONAI implementation."""
    idx = _index(in_modalities, modalities)
    net = UNet(spatial_dims=2, in_channels=len(idx), out_channels=1, channels=tuple(channels),
               strides=(2,) * (len(channels) - 1), num_res_units=residual_subunits)
    return StackedInput(net, idx)


@register_model("attention_unet")
def attention_unet(*, modalities=ALL_MODALITIES, channels=(16, 32, 64, 128), in_modalities=ALL_MODALITIES,
                   **_ignored) -> nn.Module:
    """Attention U-Net (Oktay 2018), MONAI implementation."""
    idx = _index(in_modalities, modalities)
    net = AttentionUnet(spatial_dims=2, in_channels=len(idx), out_channels=1, channels=tuple(channels),
                        strides=(2,) * (len(channels) - 1))
    return StackedInput(net, idx)
