"""Typed, frozen configuration built once from params.yaml.

A value written ``{smoke: a, quick: b, paper: c}`` is resolved by the top-level
``profile`` key, so the paper's numbers live beside the laptop ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields, replace
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from medops.errors import ConfigError

PROFILES = ("smoke", "quick", "paper")


def _resolve(value: Any, profile: str, where: str) -> Any:
    if isinstance(value, dict) and value and set(value) <= set(PROFILES):
        if profile not in value:
            raise ConfigError(where, f"no value for profile '{profile}'", f"add '{profile}:' to {where}")
        return _resolve(value[profile], profile, where)
    if isinstance(value, dict):
        return {k: _resolve(v, profile, f"{where}.{k}") for k, v in value.items()}
    return value


def _type_ok(v, hint) -> tuple[bool, Any]:
    """Whether ``v`` fits the type hint (ints are accepted for floats, lists for tuples); the value to keep."""
    import types

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, val = _type_ok(v, a)
            if ok:
                return True, val
        return False, v
    if hint is Any:
        return True, v
    if hint is type(None):
        return v is None, v
    if hint is bool:
        return isinstance(v, bool), v
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool), v
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool), float(v) if isinstance(v, (int, float)) else v
    if hint is str:
        return isinstance(v, str), v
    if hint is dict or origin is dict:
        return isinstance(v, dict), v
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            return False, v
        elems = args[:1] * len(v) if len(args) == 2 and args[1] is Ellipsis else args
        if len(elems) != len(v):
            return False, v
        vals = []
        for x, h in zip(v, elems):
            ok, val = _type_ok(x, h)
            if not ok:
                return False, v
            vals.append(val)
        return True, tuple(vals)
    return True, v


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_rules(obj, where: str) -> None:
    """Ranges and choices declared on a config dataclass (``RULES``), then its own ``check_values``."""
    import math

    for name, rule in getattr(obj, "RULES", {}).items():
        v = getattr(obj, name)
        values = v if isinstance(v, tuple) else (v,)
        for x in values:
            if isinstance(rule, tuple):
                ok, want = x in rule, f"one of {list(rule)}"
            else:
                lo_br, lo, hi, hi_br = rule[0], float(rule[1:].split(",")[0]), rule.split(",")[1][:-1].strip(), rule[-1]
                hi = math.inf if hi == "inf" else float(hi)
                ok = (x >= lo if lo_br == "[" else x > lo) and (x <= hi if hi_br == "]" else x < hi)
                want = f"in {rule}"
            if not ok:
                raise ConfigError(f"params.yaml:{where}.{name}", f"{v!r} is not allowed (must be {want})",
                                  f"set {where}.{name} to a value {want}")
    if hasattr(obj, "check_values"):
        obj.check_values(where)


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"params.yaml:{where}", f"expected a mapping of keys, got {data!r}",
                          f"write {where} as `key: value` lines")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"params.yaml:{where}", f"unknown key(s) {sorted(unknown)}",
                          f"use only {sorted(names)}")
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            v = _build(hints[f.name], v, f"{where}.{f.name}")
        else:
            ok, v = _type_ok(v, hints[f.name])
            if not ok:
                raise ConfigError(f"params.yaml:{where}.{f.name}", f"{data[f.name]!r} is not a {_type_name(hints[f.name])}",
                                  f"write {where}.{f.name} as a {_type_name(hints[f.name])} (see the README)")
        kwargs[f.name] = v
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"params.yaml:{where}", str(exc), "add the missing key") from exc
    _check_rules(obj, where)
    return obj


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    fractions: dict = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})

    def check_values(self, where: str) -> None:
        f = self.fractions
        ok = set(f) == {"train", "val", "test"} and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        and 0 <= v <= 1 for v in f.values())
        if not ok or abs(sum(f.values()) - 1) > 1e-6 or f["train"] <= 0:
            raise ConfigError(f"params.yaml:{where}.fractions", f"{f!r}: needs train, val and test in [0, 1] "
                              "summing to 1 (train > 0)", "e.g. {train: 0.7, val: 0.15, test: 0.15}")


@dataclass(frozen=True)
class ValidateConfig:
    RULES: ClassVar[dict] = {"max_mask_fraction": "(0, 1]", "min_cases_per_class": "[1, inf)",
                             "max_image_pixels": "[1024, inf)"}
    max_mask_fraction: float = 0.5
    min_cases_per_class: int = 5          # labelled data: every class needs cases in train, val and test
    max_image_pixels: int = 50_000_000    # an image declaring more pixels in its header is refused undecoded








@dataclass(frozen=True)
class TrainConfig:
    RULES: ClassVar[dict] = {
        "optimizer": ("adam", "sgd"), "lr": "(0, inf)", "weight_decay": "[0, inf)", "batch_size": "[1, inf)",
        "epochs": "[1, inf)", "loss": ("dice_bce", "ce", "focal", "ce_auc"), "auc_lambda": "(0, 10]", "dice_weight": "[0, inf)", "bce_weight": "[0, inf)",
        "scheduler": ("cosine", "step", "val_loss", "none"), "step_size": "[1, inf)", "gamma": "(0, 1]", "num_workers": "[0, inf)", "early_stopping": "[0, inf)",
        "min_delta": "[0, inf)",
        "focal_gamma": "[0, inf)", "class_weights": ("none", "inverse_frequency"), "checkpoint_every": "[1, inf)",
        "sampler": ("random", "balanced"),
        "nonfinite_check_every": "[1, inf)", "precision": ("auto", "fp32", "bf16", "fp16"),
        "channels_last": ("auto", True, False), "device_data_share": "[0, 1]"}
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 8
    epochs: int = 3
    loss: str = "dice_bce"
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    scheduler: str = "cosine"              # cosine | step (lr x gamma every step_size epochs) | val_loss (lr x gamma
                                          # when the validation loss is not below the previous epoch's) | none
    step_size: int = 30
    gamma: float = 0.1
    seed: int = 0
    num_workers: int = 0
    precision: str = "auto"               # auto | fp32 | bf16 | fp16 (medops.engine.policy)
    channels_last: bool | str = "auto"    # auto = true (conv nets, any device) | false
    compile: bool = False                 # torch.compile the net (pays off on long GPU runs)
    device_data_share: float = 0.5        # hold the data on the device if it fits in this share of its memory
    monitor: str = "val_dice"
    early_stopping: int = 0               # stop after this many epochs without a better monitor value (0: off)
    min_delta: float = 0.0                # a better monitor value counts only if it beats the last improvement by
                                          # more than this (the monitor's units; early stopping's tolerance)
    checkpoint_every: int = 1             # write last.pt every N epochs (and at the end, on early stop, on SIGTERM)
    async_checkpoint: bool = True         # write checkpoints from a CPU copy in a background thread
    nonfinite_check_every: int = 16       # read the device-side non-finite-loss flag every N steps
    focal_gamma: float = 2.0              # focal loss (classification)
    class_weights: str = "none"           # none | inverse_frequency (classification)
    sampler: str = "random"               # random | balanced (classification: each class drawn equally often,
                                          # with replacement, so most batches hold both classes)
    auc_lambda: float = 2.0               # ce_auc: lambda of the power AUC surrogate (medops.losses.auc)
    auc_alpha: tuple = (1.0,)             # ce_auc: its weight; one per sub-model of an ensemble (last = single)


@dataclass(frozen=True)
class AblationConfig:
    """An ablation as data: factors with their levels, a baseline cell, the cells to run, seeds.

    A cell is a set of ``factor: level`` overrides of the baseline ({} = the baseline itself).
    """

    RULES: ClassVar[dict] = {"epochs": "[1, inf)"}

    seeds: tuple[int, ...] = (1, 2, 3)
    epochs: int = 2                       # the budget: at most this many epochs per cell
    patience: int | None = None           # a cell stops when its validation metric has not improved for this
                                          # many epochs (= converged); None: the family's train.early_stopping
    min_delta: float | None = None        # the least gain that counts as an improvement (the monitor's units);
                                          # None: the family's train.min_delta
    factors: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)
    cells: dict = field(default_factory=dict)

    def check(self, family: str) -> None:
        """Fail before any training on an unknown factor or level, naming it."""
        from medops.layout import ID_RULE, is_safe_id

        where = f"params.yaml:ablation.{family}"
        for kind, names in (("cell", self.cells), ("factor", self.factors)):
            bad = [n for n in names if not is_safe_id(n)]
            if bad:
                raise ConfigError(f"{where}.{kind}s", f"{kind} name {bad[0]!r}: {ID_RULE}",
                                  f"rename the {kind} (its name becomes a folder or file name)")
        if len(self.seeds) < 1:
            raise ConfigError(f"{where}.seeds", "no seeds", "list at least 3 seeds")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"{where}.patience", f"{self.patience} is not allowed (must be >= 1)",
                              "set it to the epochs without improvement that count as a plateau, or remove it")
        if self.min_delta is not None and not (self.min_delta >= 0):
            raise ConfigError(f"{where}.min_delta", f"{self.min_delta} is not allowed (must be >= 0)",
                              "set it to the least gain of the validation metric that counts as an improvement "
                              "(0: any gain), or remove it")
        for name, levels in [("baseline", self.baseline), *((f"cells.{c}", v or {}) for c, v in self.cells.items())]:
            for factor, level in levels.items():
                if factor not in self.factors:
                    raise ConfigError(f"{where}.{name}", f"unknown factor '{factor}'",
                                      f"use one of {sorted(self.factors)} or declare it under factors")
                if level not in self.factors[factor]:
                    raise ConfigError(f"{where}.{name}", f"unknown level '{level}' of factor '{factor}'",
                                      f"use one of {list(self.factors[factor])}")
        missing = set(self.factors) - set(self.baseline)
        if missing:
            raise ConfigError(f"{where}.baseline", f"no baseline level for {sorted(missing)}",
                              "give every factor a baseline level")

    def levels(self, cell: str) -> dict:
        if cell not in self.cells:
            raise ConfigError(f"cell '{cell}'", "not an ablation cell", f"use one of {list(self.cells)}")
        return {**self.baseline, **(self.cells[cell] or {})}

    def cell_train(self, cell: str, base: "TrainConfig", seed: int) -> "TrainConfig":
        """The training config of a cell: the ablation's epoch budget and patience (early stopping on the
        validation metric), the seed, and any factor named after a TrainConfig field (e.g. ``lr``) set to
        the cell's level."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        kw = {k: v for k, v in self.levels(cell).items() if k in names}
        patience = base.early_stopping if self.patience is None else self.patience
        min_delta = base.min_delta if self.min_delta is None else float(self.min_delta)
        return dataclasses.replace(base, epochs=self.epochs, seed=seed, early_stopping=patience, min_delta=min_delta,
                                   **kw)

    def cell_model(self, cell: str, base):
        """The model config of a cell: factor levels named after model-config fields set to the cell's level
        (``modalities`` written ``us_mg`` becomes a tuple)."""
        names = {f.name for f in dataclasses.fields(base)}
        kw = {k: v for k, v in self.levels(cell).items() if k in names}
        if "modalities" in kw:
            kw["modalities"] = tuple(kw["modalities"].split("_"))
        return dataclasses.replace(base, **kw)

    def cell_dataset(self, cell: str, default: str) -> str:
        """The dataset a cell trains on (factor ``dataset``), else the family's."""
        return self.levels(cell).get("dataset", default)


@dataclass(frozen=True)
class PromoteConfig:
    RULES: ClassVar[dict] = {"floor": "[0, 1]", "alpha": "(0, 1)"}
    metric: str = "dsc"
    floor: float = 0.5
    alpha: float = 0.05
    require_converged: bool = True        # a challenger from a cell that never plateaued is not promoted
    floors: dict = field(default_factory=dict)   # more test metrics with a minimum, e.g. {clinical_f1: 0.3}














@dataclass(frozen=True)
class TrackingConfig:
    experiment_prefix: str = ""


@dataclass(frozen=True)
class Config:
    """The resolved parameters: shared sections, one config per registered family (``family(name)``)
    and the top-level sections families own (``section(name)``, also readable as attributes,
    e.g. ``cfg.preprocess``)."""

    profile: str
    split: SplitConfig
    validate: ValidateConfig
    tracking: TrackingConfig
    families: dict[str, Any]
    sections: dict[str, Any]
    raw: dict  # the resolved params, logged whole to MLflow

    def family(self, name: str):
        if name not in self.families:
            raise ConfigError(f"family '{name}'", "not configured in params.yaml",
                              f"use one of {sorted(self.families)} or add a '{name}:' section")
        return self.families[name]

    def section(self, name: str):
        if name not in self.sections:
            raise ConfigError(f"params.yaml:{name}", "no such section", f"use one of {sorted(self.sections)}")
        return self.sections[name]

    def __getattr__(self, name: str):  # cfg.preprocess etc.: a section a family owns
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)


SHARED_SECTIONS = {"split": SplitConfig, "validate": ValidateConfig, "tracking": TrackingConfig}
OTHER_KEYS = ("profile", "plugins", "ablation", "promote", "orchestration")


def _read(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(str(path), "parameters file not found", "run from the project root or pass --params")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML ({exc})", "fix the YAML syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(str(path), "not a mapping of sections", "write `key: value` sections (see the README)")
    return data


def load_config(path: str | Path = "params.yaml", profile: str | None = None) -> Config:
    """Read params.yaml once and build the frozen, profile-resolved config.

    Each family section is built from the dataclasses its registered family declares
    (``Family.config_class`` and ``Family.sections``); a key that nothing declares fails,
    naming its path and the valid keys."""
    from medops.families.base import family_classes, load_plugins

    path = Path(path)
    data = _read(path)
    profile = profile or data.get("profile", "quick")
    if profile not in PROFILES:
        raise ConfigError(f"{path}:profile", f"unknown profile '{profile}'", f"use one of {PROFILES}")
    resolved = {k: _resolve(v, profile, k) for k, v in data.items() if k != "profile"}
    resolved["profile"] = profile
    load_plugins(resolved.get("plugins") or [])
    classes = family_classes()
    owned = {sec: (name, dc) for name, cls in classes.items() for sec, dc in cls.sections.items()}
    known = set(SHARED_SECTIONS) | set(OTHER_KEYS) | set(classes) | set(owned)
    unknown = sorted(set(resolved) - known)
    if unknown:
        raise ConfigError(f"{path}:{unknown[0]}", f"unknown top-level key(s) {unknown}", f"use only {sorted(known)}")
    for group in ("ablation", "promote"):
        bad = sorted(set(resolved.get(group) or {}) - set(classes))
        if bad:
            raise ConfigError(f"{path}:{group}.{bad[0]}", "not a registered family",
                              f"use one of {sorted(classes)} (or add the family's plugin module under plugins:)")
    families = {}
    for name, cls in classes.items():
        if name not in resolved:
            continue
        sec = dict(resolved[name] or {})
        sec["ablation"] = (resolved.get("ablation") or {}).get(name, {})
        sec["promote"] = (resolved.get("promote") or {}).get(name, {})
        fcfg = _build(cls.config_class, sec, name)
        fcfg.ablation.check(name)
        cls(None).check_config(fcfg)
        families[name] = fcfg
    sections = {sec: _build(dc, resolved.get(sec) or {}, sec) for sec, (_, dc) in owned.items()}
    shared = {sec: _build(dc, resolved.get(sec) or {}, sec) for sec, dc in SHARED_SECTIONS.items()}
    return Config(profile=profile, families=families, sections=sections, raw=resolved, **shared)

def from_logged_params(run_params: dict, default, section: str = "preprocess"):
    """The preprocessing the model was trained with (``default``'s dataclass, read from the run's logged
    ``<section>.<field>`` parameters; fields not logged keep ``default``'s value)."""
    kw = {}
    for f in fields(default):
        v = run_params.get(f"{section}.{f.name}")
        if v is None:
            continue
        cur = getattr(default, f.name)
        kw[f.name] = tuple(int(x) for x in v.strip("()[]").split(",") if x.strip()) if isinstance(cur, tuple) \
            else type(cur)(v)
    return replace(default, **kw)
