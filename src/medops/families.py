"""Model families: name -> dataset, training hooks and evaluation. Adding a family adds an entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from medops.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    dataset: str
    task: Callable           # (net, TrainConfig) -> TaskModule
    evaluate: Callable       # see medops.evaluation
    input_channels: int


def _fusion_seg() -> Family:
    from medops.evaluation.segmentation import evaluate_segmentation
    from medops.models.fusion_seg.task import SegmentationTask

    return Family("fusion_seg", "breast-trimodal", SegmentationTask, evaluate_segmentation, 3)


_FAMILIES = {"fusion_seg": _fusion_seg}


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ConfigError(f"family '{name}'", "unknown model family", f"use one of {sorted(_FAMILIES)}")
    return _FAMILIES[name]()


def list_families() -> list[str]:
    return sorted(_FAMILIES)
