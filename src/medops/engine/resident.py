"""Data resident on the device: a split held as tensors where the model trains, batches indexed there.

A dataset opts in by subclassing :class:`ResidentDataset`: it exposes its cases as tensors indexed along
dim 0 (``resident_tensors``, in their storage dtype, e.g. fp16 images and uint8 masks) and builds a batch
from them (``resident_batch``) exactly as the DataLoader would collate ``[ds[i] for i in idx]`` — so a run
gives the same batches, in the same (seed, epoch) order, whether its data is resident or loaded.
The trainer keeps a split resident when train + validation fit in ``train.device_data_share`` of the
device's memory and falls back to a pinned-memory DataLoader otherwise (and logs why).
"""

from __future__ import annotations

import logging
import os

import torch
from torch.utils.data import Dataset

log = logging.getLogger("medops.engine")


class ResidentDataset(Dataset):
    """A dataset the trainer may hold on the device (see the module docstring)."""

    def resident_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def resident_batch(self, tensors: dict[str, torch.Tensor], idx: torch.Tensor) -> list:
        raise NotImplementedError


def nbytes(ds: Dataset) -> int:
    return sum(t.nbytes for t in ds.resident_tensors().values())


def device_memory(device: torch.device) -> int:
    """Bytes of memory on ``device`` (for the CPU: physical RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def placement(datasets: list[Dataset], device: torch.device, share: float, world: int = 1) -> tuple[str, str]:
    """``("device", why)`` when every dataset can be resident and together they fit in ``share`` of the
    device's memory, else ``("loader", why)``."""
    if world > 1:
        return "loader", "distributed training shards the data with a DistributedSampler"
    if share <= 0:
        return "loader", "train.device_data_share is 0"
    if not all(isinstance(d, ResidentDataset) for d in datasets):
        return "loader", "the family's dataset does not offer resident tensors"
    need, have = sum(nbytes(d) for d in datasets), device_memory(device)
    if need > share * have:
        why = (f"the data ({need / 2**30:.2f} GiB) is larger than train.device_data_share={share} of {device.type} "
               f"memory ({share * have / 2**30:.2f} GiB); loading batches with a DataLoader")
        log.warning(why)
        return "loader", why
    return "device", f"{need / 2**30:.3f} GiB held on {device.type}"


def to_device(ds: ResidentDataset, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: t.to(device) for k, t in ds.resident_tensors().items()}


def batches(ds: ResidentDataset, tensors: dict, order: torch.Tensor, batch_size: int):
    """Batches of ``order`` (case indices, already trimmed to what the epoch trains on)."""
    order = order.to(next(iter(tensors.values())).device)
    for s in range(0, len(order), batch_size):
        yield ds.resident_batch(tensors, order[s:s + batch_size])
