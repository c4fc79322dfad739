"""Starting weights of the transfer classifiers, read from files here (``models/`` reads none):
torchvision's ImageNet checkpoints from the local torch cache (never downloaded at run time) and
source-domain checkpoints from ``medops train transfer_cls --pretrain <backbone>``."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from medops.errors import ConfigError
from medops.models.transfer_cls.net import BACKBONES

def imagenet_cache_file(backbone: str) -> Path:
    """Where torch keeps the ImageNet checkpoint of ``backbone`` (torch.hub cache)."""
    w = torchvision.models.get_weight(BACKBONES[backbone].weights)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name


def imagenet_state(backbone: str) -> dict:
    """torchvision's ImageNet state dict of ``backbone`` from the local torch cache."""
    path = imagenet_cache_file(backbone)
    if not path.exists():
        raise ConfigError(f"weights 'imagenet' for {backbone}",
                          f"ImageNet weights are not in the local torch cache ({path}); medops never downloads at run time",
                          f"on a machine with network run `python -c \"import torchvision; torchvision.models.get_weight("
                          f"'{BACKBONES[backbone].weights}').get_state_dict()\"` and copy {path.name} into "
                          f"{path.parent}, or use weights: source (offline transfer from the simulated source domain)")
    return torch.load(path, map_location="cpu", weights_only=True)


def source_state(path: Path, backbone: str, family: str) -> dict:
    """The model state of a source-domain checkpoint (tensors only: ``weights_only=True``)."""
    if not Path(path).exists():
        raise ConfigError(f"weights 'source' for {backbone}", f"no source-domain checkpoint at {path}",
                          f"run `medops train {family} --pretrain {backbone}` (dvc repro pretrain) first")
    return torch.load(path, map_location="cpu", weights_only=True)["model"]
