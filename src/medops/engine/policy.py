"""The precision and speed policy of a training run (params ``train.precision``, ``train.channels_last``,
``train.compile``), resolved once for the device the run trains on.

=============  =========================================================================================
``auto``       bf16 autocast without a GradScaler where the device supports bf16 (CUDA Ampere and
               later); fp16 autocast + GradScaler on older GPUs; fp32 on the CPU
``fp32``       no autocast
``bf16``       bf16 autocast, no GradScaler (bf16 has fp32's range); a device without bf16 is refused
``fp16``       fp16 autocast + dynamic loss scaling (GradScaler); CUDA only
=============  =========================================================================================

``channels_last``: ``auto`` (and ``true``) use the channels-last memory layout (NHWC / NDHWC) for convolutional
nets on every device, ``false`` never. On CUDA cuDNN's tensor-core kernels want it; on the CPU oneDNN's
convolutions are faster in it too: one training step of each family's quick model was 1.13-1.52x faster
(``benchmarks/cpu_layout.py``, README). The layouts sum in another order: losses agree to rounding over a
short run (``tests/test_policy.py``), but a run is reproducible bit for bit only within one layout. ``compile``: wrap the
net in ``torch.compile`` (off by default: compilation costs tens of seconds, repaid on long runs).
On CUDA the policy also turns on fused Adam and cuDNN autotuning (the shapes of a run are fixed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from medops.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"  # CPU autocast runs bf16 (oneDNN)


def _conv_dims(net: nn.Module) -> int:
    """3 for a net with 3-D convolutions, 2 for 2-D ones, 0 without convolutions."""
    kinds = {type(m) for m in net.modules()}
    if kinds & {nn.Conv3d, nn.ConvTranspose3d}:
        return 3
    if kinds & {nn.Conv2d, nn.ConvTranspose2d}:
        return 2
    return 0


@dataclass(frozen=True)
class Policy:
    """What a run actually does on its device (logged as run params ``engine.*``)."""

    precision: str            # fp32 | bf16 | fp16 (resolved)
    channels_last: bool
    compile: bool
    fused_optimizer: bool
    conv_dims: int = 0

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.precision]

    @property
    def grad_scaler(self) -> bool:
        return self.precision == "fp16"

    @property
    def memory_format(self) -> torch.memory_format | None:
        if not self.channels_last or not self.conv_dims:
            return None
        return torch.channels_last_3d if self.conv_dims == 3 else torch.channels_last

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def as_params(self) -> dict[str, str]:
        return {"engine.precision": self.precision, "engine.channels_last": str(self.channels_last).lower(),
                "engine.compile": str(self.compile).lower(), "engine.fused_optimizer": str(self.fused_optimizer).lower()}


def resolve_precision(requested: str, device: torch.device) -> str:
    """``train.precision`` for ``device``; a choice the device cannot run fails naming both and the choices."""
    if requested not in PRECISIONS:
        raise ConfigError("train.precision", f"unknown precision {requested!r}", f"use one of {list(PRECISIONS)}")
    if requested == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if bf16_supported(device) else "fp16"
    if requested == "bf16" and not bf16_supported(device):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        raise ConfigError("train.precision", f"bf16 is not supported on device {device} ({name})",
                          "use precision: auto (fp16 + GradScaler there), fp16 or fp32")
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision", f"fp16 autocast with a GradScaler needs a CUDA device (this run trains "
                          f"on {device.type})", "use precision: auto, bf16 or fp32 on the CPU")
    return requested


def resolve_policy(cfg, device: torch.device, net: nn.Module | None = None) -> Policy:
    """The policy of ``cfg`` (a TrainConfig) for ``device`` and ``net``."""
    dims = _conv_dims(net) if net is not None else 0
    cl = cfg.channels_last
    if cl not in ("auto", True, False):
        raise ConfigError("train.channels_last", f"{cl!r} is not a choice", "use auto, true or false")
    return Policy(precision=resolve_precision(cfg.precision, device),
                  channels_last=bool(dims) and cl in ("auto", True),
                  compile=bool(cfg.compile), fused_optimizer=device.type == "cuda", conv_dims=dims)


def check_resumable(checkpoint: dict, policy: Policy, where: str) -> None:
    """A ``last.pt`` written under another precision cannot resume exactly (the GradScaler state, the
    rounding of every step): refuse, naming both policies."""
    saved = checkpoint.get("precision")
    if saved is not None and saved != policy.precision:
        raise ConfigError(where, f"last.pt was written with precision {saved!r}; this run resolves "
                          f"train.precision to {policy.precision!r}",
                          f"resume with train.precision: {saved} (on a device that has it), or train again "
                          f"without --resume")
