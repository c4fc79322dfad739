"""The medops trainer: one loop, family behaviour in hooks (after nnU-Net's trainer).

A family supplies a :class:`TaskModule` (``train_step``, ``validation_step``,
``validation_epoch_end``, ``configure_optimizers``, ``epoch_extras``); the
trainer owns the loop: device choice, the precision and speed policy
(:mod:`medops.engine.policy`: bf16/fp16 autocast, channels-last, ``torch.compile``, fused Adam),
data resident on the device when it fits (:mod:`medops.engine.resident`), seeding, a
per-epoch seeded data order, a progress bar, per-epoch metrics to a logger,
the best checkpoint on the monitored metric, and ``last.pt`` with the full
state (model, optimiser, scheduler, grad scaler, RNG, epoch, history) so a
killed run resumed with ``resume=True`` ends exactly where an uninterrupted
run would. Checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from medops.config import TrainConfig
from medops.engine import resident
from medops.engine.distributed import all_reduce_sum, barrier, env_info
from medops.engine.policy import check_resumable, resolve_policy
from medops.errors import ConfigError, DataError


class CheckpointError(DataError):
    """A checkpoint file that cannot be trusted or read."""


class Preempted(Exception):
    """SIGTERM (pod eviction, preemption): the step finished, ``last.pt`` holds it; resume with ``--resume``."""

    EXIT_CODE = 75  # EX_TEMPFAIL: the orchestrator retries, and the retry resumes


def _to_cpu(obj):
    """A CPU copy of a checkpoint (tensors cloned), safe to write while training goes on."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def plateaued(values: list[float], mode: str, patience: int, min_delta: float = 0.0) -> bool:
    """The early-stopping rule, from the validation history alone: the last *significant* improvement is at
    least ``patience`` epochs old. An epoch improves only if it beats the reference — the value of the last
    epoch that improved — by more than ``min_delta`` (the monitor's units; 0: any gain counts, and the
    reference is then the first epoch reaching the best value). A slow creep still counts once its gains add
    up to more than ``min_delta``, as in Keras' and Lightning's ``EarlyStopping``. True also when the plateau
    comes in the budget's last epoch — a run that plateaued exactly as its budget ended has converged."""
    if patience <= 0 or not values:
        return False
    sign = 1.0 if mode == "max" else -1.0
    ref, last = values[0], 0
    for i, v in enumerate(values[1:], start=1):
        if sign * (v - ref) > min_delta:
            ref, last = v, i
    return len(values) - 1 - last >= patience


def stopped_on_plateau(history: list[dict], task, cfg) -> bool:
    """The run's stopping rule on its validation history: the task's monitor and mode, the config's patience
    (``early_stopping``) and tolerance (``min_delta``). The trainer stops on it; a run's ``converged`` flag is it."""
    return plateaued([h[task.monitor] for h in history], task.monitor_mode, cfg.early_stopping, cfg.min_delta)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Logger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class PreviousLossStep(torch.optim.lr_scheduler.LRScheduler):
    """Multiply the learning rate by ``gamma`` after an epoch whose validation loss is not lower than the
    previous epoch's (paper 003, Eq. 5: α_new = β·α_old if val_loss ≥ val_loss_previous). Unlike
    ``ReduceLROnPlateau`` it compares with the previous epoch, not the best one. ``step(val_loss)`` after
    validation; its state (the previous loss) is checkpointed with the optimiser's."""

    needs_metric = True

    def __init__(self, optimizer, gamma: float = 0.1):
        self.gamma, self.previous, self._decay = gamma, None, False
        super().__init__(optimizer)

    def get_lr(self):
        factor = self.gamma if self._decay else 1.0
        return [g["lr"] * factor for g in self.optimizer.param_groups]

    def step(self, val_loss: float | None = None):  # noqa: D102 - see the class
        if val_loss is None:              # the constructor's initial step
            self._decay = False
            return super().step()
        self._decay = self.previous is not None and val_loss >= self.previous
        self.previous = float(val_loss)
        super().step()
        self._decay = False


class TaskModule(nn.Module):
    """Hooks a family implements. ``self.net`` is the model that gets checkpointed."""

    monitor: str = "val_loss"
    monitor_mode: str = "min"

    def __init__(self, net: nn.Module, cfg: TrainConfig):
        super().__init__()
        self.net, self.cfg = net, cfg

    def configure_optimizers(self):
        cfg = self.cfg
        if cfg.optimizer == "adam":  # fused (one kernel for all parameters) where they live on CUDA
            fused = all(p.is_cuda for p in self.net.parameters()) or None
            opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        elif cfg.optimizer == "sgd":
            opt = torch.optim.SGD(self.net.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        else:
            raise ConfigError("train.optimizer", f"unknown optimizer '{cfg.optimizer}'", "use 'adam' or 'sgd'")
        if cfg.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
        elif cfg.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
        elif cfg.scheduler == "val_loss":
            sched = PreviousLossStep(opt, gamma=cfg.gamma)
        elif cfg.scheduler in ("none", None):
            sched = None
        else:
            raise ConfigError("train.scheduler", f"unknown scheduler '{cfg.scheduler}'",
                              "use 'cosine', 'step', 'val_loss' or 'none'")
        return opt, sched

    def train_step(self, batch) -> torch.Tensor:  # returns the loss
        raise NotImplementedError

    def validation_step(self, batch) -> dict:
        raise NotImplementedError

    def validation_epoch_end(self, outputs: list[dict]) -> dict[str, float]:
        raise NotImplementedError

    def epoch_extras(self) -> dict[str, float]:
        """Extra per-epoch metrics (e.g. attention weights)."""
        return {}


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
          "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    """Restore every generator from CPU byte tensors (``torch.set_rng_state`` needs a CPU ByteTensor; the CUDA
    generators are set from their CPU copies), whatever device the checkpoint was mapped to."""
    cpu = lambda t: torch.as_tensor(t).detach().to("cpu", torch.uint8)  # noqa: E731
    torch.set_rng_state(cpu(st["torch"]))
    random.setstate((3, tuple(int(x) for x in st["python"]), None))
    np.random.set_state(("MT19937", torch.as_tensor(st["numpy"]).cpu().numpy().astype(np.uint32), 624, 0, 0.0))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([cpu(t) for t in st["cuda"]])


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint's tensors and plain values (``weights_only=True``: no code runs); anything else — a planted
    pickle, a truncated or foreign file — is refused with the file named."""
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(str(path), f"checkpoint_readable: not a medops checkpoint or damaged "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})",
                              "delete it and train again (or restore it from DVC: dvc checkout)") from exc
    if not isinstance(ck, dict) or "model" not in ck or "epoch" not in ck:
        raise CheckpointError(str(path), "checkpoint_readable: no model state or epoch in the file",
                              "delete it and train again (or restore it from DVC: dvc checkout)")
    return ck


class _CheckpointWriter:
    """Checkpoints off the hot path: a CPU copy is taken at once, written by one background thread (atomic:
    temp file + rename; never two writers — a new save waits for the previous one)."""

    def __init__(self, background: bool = True):
        self.background, self._thread, self._error = background, None, None

    def save(self, obj: dict, path: Path) -> None:
        import threading

        self.wait()
        snapshot = _to_cpu(obj)
        if not self.background:
            _atomic_save(snapshot, path)
            return

        def write():
            try:
                _atomic_save(snapshot, path)
            except BaseException as exc:  # noqa: BLE001  (reported by wait())
                self._error = exc
        self._thread = threading.Thread(target=write, name="medops-checkpoint", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


class _PreemptionGuard:
    """While training, SIGTERM sets ``stop`` instead of killing the process (main thread only)."""

    def __init__(self):
        self.stop, self._old = False, None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def __exit__(self, *exc):
        import signal

        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False


class _Sized:
    """An iterator with a length (for the progress bar)."""

    def __init__(self, it, n: int):
        self.it, self.n = it, n

    def __iter__(self):
        return iter(self.it)

    def __len__(self):
        return self.n


class Trainer:
    """Fit a :class:`TaskModule` on datasets; checkpoints under ``out_dir``."""

    def __init__(self, task: TaskModule, cfg: TrainConfig, out_dir: str | Path, *, logger: Logger | None = None,
                 progress: bool = True, device: torch.device | None = None,
                 callbacks: list[Callable[[str, dict], None]] | None = None):
        self.task, self.cfg, self.out = task, cfg, Path(out_dir)
        self.logger, self.progress = logger, progress
        self.device = device or pick_device()
        self.dist = env_info()
        if self.dist.world > 1 and device is None and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.dist.world > 1 and cfg.scheduler == "val_loss":
            raise ConfigError("train.scheduler", "val_loss steps on rank 0's validation loss, which the other "
                              f"{self.dist.world - 1} processes do not see", "use scheduler: step or cosine with --nproc > 1")
        if self.dist.world > 1 and cfg.sampler != "random":
            raise ConfigError("train.sampler", f"'{cfg.sampler}' sampling is single-process only",
                              "use sampler: random with --nproc > 1 (or class_weights: inverse_frequency)")
        if self.dist.world > 1 and cfg.batch_size % self.dist.world:
            raise ConfigError("train.batch_size", f"global batch {cfg.batch_size} is not divisible by "
                              f"{self.dist.world} processes", "choose a batch size that is a multiple of --nproc")
        self.policy = resolve_policy(cfg, self.device, task.net)  # a precision the device lacks fails here
        self.data = ("loader", "")  # where the training data lives: set by fit
        self.callbacks = callbacks or []
        self.history: list[dict] = []
        self._checkpoints = _CheckpointWriter(background=cfg.async_checkpoint)
        self.progress = progress and self.dist.main
        self._resident: dict = {}
        self.out.mkdir(parents=True, exist_ok=True)

    # -- data
    def _loader(self, ds: Dataset, epoch: int | None, skip_batches: int = 0) -> DataLoader:
        kw = dict(batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers,
                  pin_memory=self.device.type == "cuda")
        if epoch is None:  # its own generator: starting it draws nothing from the global RNG
            return DataLoader(ds, shuffle=False, generator=torch.Generator().manual_seed(0), **kw)
        if self.dist.world > 1:
            sampler = DistributedSampler(ds, num_replicas=self.dist.world, rank=self.dist.rank, shuffle=True,
                                         seed=self.cfg.seed * 100_003, drop_last=True)
            sampler.set_epoch(epoch)
            kw["batch_size"] = self.cfg.batch_size // self.dist.world
            return DataLoader(ds, sampler=sampler, drop_last=len(ds) > self.cfg.batch_size, **kw)
        g = torch.Generator()
        g.manual_seed(self.cfg.seed * 100_003 + epoch)  # data order depends on (seed, epoch) only
        drop_last = len(ds) > self.cfg.batch_size
        # the loader's own seed comes from a generator of (seed, epoch), not from the global RNG, so starting
        # an epoch's iterator consumes nothing that dropout or augmentation draw from (exact mid-epoch resume)
        kw["generator"] = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch + 7)
        if skip_batches:  # resuming inside an epoch: the same order, without the batches already trained
            return DataLoader(torch.utils.data.Subset(ds, self._order(ds, epoch, skip_batches).tolist()),
                              shuffle=False, **kw)
        return DataLoader(ds, sampler=self._sampler(ds, g), drop_last=drop_last, **kw)

    def _sampler(self, ds: Dataset, g: torch.Generator):
        """An epoch's draw: a permutation, or (``sampler: balanced``) ``len(ds)`` draws with replacement in
        which every class is equally likely (weights 1 / class count, from the dataset's ``labels``)."""
        if self.cfg.sampler == "random":
            return RandomSampler(ds, generator=g)
        labels = getattr(ds, "labels", None)
        if labels is None:
            raise ConfigError("train.sampler", f"'balanced' needs class labels; {type(ds).__name__} has no "
                              "`labels`", "use sampler: random for this task")
        labels = torch.as_tensor(labels).long()
        weights = (1.0 / torch.bincount(labels).clamp_min(1).double())[labels]
        return WeightedRandomSampler(weights, len(ds), replacement=True, generator=g)

    def _order(self, ds: Dataset, epoch: int, skip_batches: int = 0) -> torch.Tensor:
        """The cases an epoch trains on, in order: a function of (seed, epoch) only, the same for the
        DataLoader and the resident path (full batches only when there is more than one)."""
        g = torch.Generator()
        g.manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.tensor(list(self._sampler(ds, g)), dtype=torch.long)
        bs = self.cfg.batch_size
        n_full = len(order) // bs * bs if len(ds) > bs else len(order)
        return order[skip_batches * bs:n_full]

    def _batches(self, ds: Dataset, epoch: int | None, skip_batches: int = 0):
        """An epoch's batches (``epoch=None``: the whole split in order, for validation), from the tensors held
        on the device or from a DataLoader."""
        held = self._resident.get(id(ds))
        if held is None:
            return self._loader(ds, epoch, skip_batches)
        order = torch.arange(len(ds)) if epoch is None else self._order(ds, epoch, skip_batches)
        return _Sized(resident.batches(ds, held, order, self.cfg.batch_size), -(-len(order) // self.cfg.batch_size))

    def _to_device(self, batch) -> list:
        fmt = self.policy.memory_format
        out = []
        for b in batch:
            if torch.is_tensor(b):
                b = b.to(self.device, non_blocking=True)
                if fmt is not None and b.is_floating_point() and b.dim() == (5 if self.policy.conv_dims == 3 else 4):
                    b = b.contiguous(memory_format=fmt)
            out.append(b)
        return out

    def _emit(self, event: str, info: dict) -> None:
        for cb in self.callbacks:
            cb(event, info)

    def _better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.task.monitor_mode == "max" else value < best

    def fit(self, train_ds: Dataset, val_ds: Dataset, *, resume: bool = False) -> list[dict]:
        task, cfg, pol = self.task.to(self.device), self.cfg, self.policy
        seed_everything(cfg.seed)
        net = task.net
        if pol.memory_format is not None:
            net.to(memory_format=pol.memory_format)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # a run's shapes are fixed: autotune the convolutions once
        self.data = resident.placement([train_ds, val_ds], self.device, cfg.device_data_share, self.dist.world)
        self._resident = ({id(d): resident.to_device(d, self.device) for d in (train_ds, val_ds)}
                          if self.data[0] == "device" else {})
        self._emit("engine", {**pol.as_params(), "engine.data": self.data[0], "engine.device": str(self.device)})
        if self.dist.world > 1:  # the task's train_step calls self.net: let it call the DDP wrapper
            task.net = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if pol.compile:
            task.net = torch.compile(task.net)
        try:
            return self._fit(task, net, train_ds, val_ds, resume)
        finally:
            task.net = net
            self._resident = {}

    def _fit(self, task, net, train_ds, val_ds, resume):
        main = self.dist.main
        opt, sched = task.configure_optimizers()
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.policy.grad_scaler)
        start, best, skip = 0, None, (0, 0.0, 0)
        last = self.out / "last.pt"
        if resume and last.exists():
            start, best, skip = self._restore(last, net, opt, sched, scaler)
            if self._should_stop():  # it had already stopped early: resuming must not train on
                return self.history
        elif not resume and main:
            for stale in ("last.pt", "best.pt"):
                (self.out / stale).unlink(missing_ok=True)
        with _PreemptionGuard() as guard:
            return self._epochs(task, net, opt, sched, scaler, train_ds, val_ds, start, best, skip, guard)

    def _epochs(self, task, net, opt, sched, scaler, train_ds, val_ds, start, best, skip, guard):
        cfg, main, last = self.cfg, self.dist.main, self.out / "last.pt"
        every = max(1, cfg.nonfinite_check_every)
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            task.train()
            first, total0, n = skip if epoch == start else (0, 0.0, 0)
            loader = self._batches(train_ds, epoch, skip_batches=first)
            total, bad = torch.tensor(total0, device=self.device), torch.zeros((), dtype=torch.bool, device=self.device)
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress, leave=False)
            checked, step = first, first - 1
            for step, batch in enumerate(bar, start=first):
                batch = self._to_device(batch)
                with self.policy.autocast(self.device):
                    loss = task.train_step(batch)
                bad |= ~torch.isfinite(loss.detach())  # on the device: no host sync per step
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total += loss.detach()
                n += 1
                self._emit("train_batch_end", {"epoch": epoch, "step": step})
                if (step + 1) % every == 0:
                    checked = self._check_finite(bad, epoch, checked, step)
                if guard.stop:  # SIGTERM: this step is done; keep it and leave
                    self._check_finite(bad, epoch, checked, step)
                    self._save_last(net, opt, sched, scaler, epoch, best, last, partial=(step + 1, float(total), n))
                    self._checkpoints.wait()
                    raise Preempted(f"stopped by SIGTERM at epoch {epoch + 1}, step {step + 1}; resume with --resume")
            self._check_finite(bad, epoch, checked, step)
            if sched is not None and not getattr(sched, "needs_metric", False):
                sched.step()
            stats = all_reduce_sum(torch.stack([total.float(), torch.tensor(float(n), device=self.device)]))
            train_loss = float(stats[0]) / max(float(stats[1]), 1)
            if not main:  # rank 0 validates, logs and checkpoints; the others wait for it
                stop = self._stop_together(False)
                barrier()
                if stop:
                    break
                continue
            val = self.validate(val_ds, net)
            rec = {"epoch": epoch + 1, "train_loss": train_loss, **val,
                   "lr": opt.param_groups[0]["lr"], "epoch_time_s": time.perf_counter() - t0}
            if sched is not None and getattr(sched, "needs_metric", False):
                if "val_loss" not in val:
                    raise ConfigError("train.scheduler", "val_loss: this task reports no validation loss",
                                      "use scheduler: step, cosine or none")
                sched.step(val["val_loss"])        # the lr of the next epoch
            self.history.append(rec)
            metric = rec[task.monitor]
            if self._better(metric, best):
                best = metric
                self._checkpoints.save({"model": net.state_dict(), "epoch": epoch + 1, task.monitor: metric},
                                       self.out / "best.pt")
            if (epoch + 1) % max(1, cfg.checkpoint_every) == 0 or epoch + 1 == cfg.epochs or guard.stop:
                self._save_last(net, opt, sched, scaler, epoch + 1, best, last)
            if self.logger is not None:
                self.logger.log_metrics({k: v for k, v in rec.items() if k != "epoch"}, step=epoch + 1)
            if self.progress:
                shown = f"  {task.monitor} {metric:.4f}" if task.monitor != "val_loss" else ""
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  train_loss {train_loss:.4f}  "
                           f"val_loss {rec.get('val_loss', float('nan')):.4f}{shown}")
            self._emit("epoch_end", rec)
            stop = self._stop_together(self._should_stop())
            barrier()
            if stop:
                if self.progress:
                    gain = f" by more than {cfg.min_delta:g}" if cfg.min_delta else ""
                    tqdm.write(f"early stopping: {task.monitor} not better{gain} for {cfg.early_stopping} epochs")
                self._save_last(net, opt, sched, scaler, epoch + 1, best, last)
                break
            if guard.stop:
                self._checkpoints.wait()
                raise Preempted(f"stopped by SIGTERM after epoch {epoch + 1}; resume with --resume")
        self._checkpoints.wait()
        return self.history

    def _check_finite(self, bad: torch.Tensor, epoch: int, first: int, step: int) -> int:
        """Read the device-side non-finite flag (every N steps and at epoch end): fail naming the step range."""
        if bool(bad):
            raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}, steps {first}-{step}")
        return step + 1

    def _save_last(self, net, opt, sched, scaler, epoch: int, best, last: Path, partial=None) -> None:
        """``last.pt``: everything a resume needs (``partial``: steps done, loss sum and count of an unfinished
        epoch), written from a CPU copy by the background writer."""
        self._checkpoints.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict() if sched is not None else {},
                                "scaler": scaler.state_dict(), "rng": _rng_state(), "epoch": epoch, "best": best,
                                "partial": list(partial or (0, 0.0, 0)), "history": json.dumps(self.history),
                                "precision": self.policy.precision,
                                "config": json.dumps(asdict(self.cfg))}, last)

    def _restore(self, last: Path, net, opt, sched, scaler):
        """Resume from ``last.pt`` on any device: loaded on the CPU, states moved to the model's device by
        ``load_state_dict``, generators restored from CPU byte tensors. Returns (start epoch, best, partial)."""
        ck = load_checkpoint(last, map_location="cpu")
        check_resumable(ck, self.policy, str(last))
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])  # moves the optimiser state to each parameter's device
        if sched is not None and ck.get("scheduler"):
            sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"])
        self.history = json.loads(ck["history"])
        partial = tuple(ck.get("partial", (0, 0.0, 0)))
        self._emit("resumed", {"epoch": ck["epoch"], "step": partial[0]})
        return ck["epoch"], ck["best"], (int(partial[0]), float(partial[1]), int(partial[2]))

    def _stop_together(self, stop: bool) -> bool:
        """Under DDP every rank must leave the loop in the same epoch: rank 0 decides, the others learn it."""
        if self.dist.world > 1 and self.cfg.early_stopping > 0:
            return bool(all_reduce_sum(torch.tensor([float(stop)], device=self.device))[0] > 0)
        return stop

    def _should_stop(self) -> bool:
        """Early stopping from the history alone, so a resumed run stops where an uninterrupted one would."""
        return stopped_on_plateau(self.history, self.task, self.cfg)

    @torch.no_grad()
    def validate(self, ds: Dataset, net: nn.Module | None = None) -> dict[str, float]:
        self.task.eval()
        wrapped = self.task.net
        if net is not None:
            self.task.net = net  # validate the bare module: no gradient sync, no collective calls
        outs = []
        for batch in self._batches(ds, None):
            batch = self._to_device(batch)
            with self.policy.autocast(self.device):
                outs.append(self.task.validation_step(batch))
        metrics = {**self.task.validation_epoch_end(outs), **self.task.epoch_extras()}
        self.task.net = wrapped
        return metrics
