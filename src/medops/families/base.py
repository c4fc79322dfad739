"""The family contract: every point where two model families differ is a named method of :class:`Family`.

A model family is one paper's task (its datasets, model, training hooks, evaluation, paper-shaped
report and promotion comparison) packaged as a subclass of :class:`Family`, registered by name with
:func:`register_family` (after torchvision's ``models/_api.py``). Shared code (the CLI, the verb
modules in ``medops.runs``, the trainer, tracking, DVC/Airflow/Kubeflow wiring) never names a family
and never branches on a task type: where families differ it calls one of these methods.

A family lives in ``medops/families/<name>/`` (built in) or in any importable module named under
``plugins:`` in params.yaml (or the ``medops.families`` entry-point group). Its params are the
``<name>:`` section of params.yaml (built from :attr:`Family.config_class`), plus
``ablation.<name>`` and ``promote.<name>``; top-level sections it owns (e.g. a simulator's settings)
are listed in :attr:`Family.sections`.

Example — a family is found by name, and an unknown name lists the known ones::

    >>> from medops.families import get_family, list_families
    >>> fam = get_family(list_families()[0])
    >>> fam.name in list_families()
    True
    >>> get_family("no_such_family")
    Traceback (most recent call last):
    ...
    medops.errors.ConfigError: family 'no_such_family': unknown model family. Fix: use one of [...]

See ``tests/tiny_family.py`` for a whole family in about 150 lines, and the README's
"Adding a model family".
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from medops.errors import ConfigError, MedopsError

_FAMILIES: dict[str, type["Family"]] = {}
_DISCOVERED = False


@dataclass(frozen=True)
class Prepared:
    """What a training run needs, resolved by the family: config, dataset and where it writes."""

    dataset: str
    model_cfg: Any
    train_cfg: Any
    out: Path
    kind: str                              # main | <cell> | pretrain:<name>
    extra_inputs: dict = field(default_factory=dict)   # more inputs for the idempotency fingerprint


class Family:
    """Base class of a model family. Subclass it, set the class attributes, implement the methods
    marked *required*, and decorate the class with ``@register_family``.

    Class attributes:
        name: the family's name (params.yaml section, MLflow experiment, registered model name).
        config_class: frozen dataclass of the ``<name>:`` params section; it must have ``model``,
            ``train``, ``ablation`` and ``promote`` fields (``ablation``/``promote`` come from
            ``ablation.<name>`` and ``promote.<name>``).
        sections: top-level params sections this family owns, name -> frozen dataclass.
        datasets: the simulated datasets ``medops generate`` makes for this family.
        metrics: test metrics a cell records (its ``status.json`` ``test`` keys).
        selection: validation metric (``history.csv`` column, higher is better) that picks the candidate.
        data_description: what the model was trained on, for the model card.
        limitations: the model card's "Known limitations" lines.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    sections: ClassVar[dict[str, type]] = {}
    datasets: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[tuple[str, ...]] = ()
    selection: ClassVar[str] = ""
    data_description: ClassVar[str] = "images"
    limitations: ClassVar[tuple[str, ...]] = (
        "Simulated data calibrated on image appearance, not on clinical data; no external validation.",
        "2-D images at the profile's image size; one lesion per case.",
        "Confidence intervals are over few seeds (t-interval); per-case tests assume independent cases.")

    def __init__(self, cfg=None):
        self.cfg = cfg

    # ------------------------------------------------------------------ config
    def check_config(self, fcfg) -> None:
        """Cross-field checks of the family's resolved config (raise ConfigError naming the key)."""

    # ------------------------------------------------------------------ data
    def default_dataset(self, fcfg) -> str:
        """The dataset the family's main model trains on. *Required.*"""
        raise NotImplementedError

    def generate(self, cfg, dataset: str, out: Path):
        """Simulate ``dataset`` into the (empty, temporary) folder ``out``; return its manifest. *Required*
        when :attr:`datasets` is not empty."""
        raise NotImplementedError

    def contact_sheet(self, cfg, dataset: str, root: Path, png: Path) -> None:
        """Write a picture of the dataset (a few cases per class/modality) to ``png``."""

    def validation_spec(self, cfg, root: Path, dataset: str):
        """The gate's rules for this family's data: a :class:`medops.validation.DatasetSpec` (``None``:
        the rules the data layout implies)."""
        return None

    def preprocess(self, cfg, root: Path, out: Path) -> tuple[Any, str]:
        """Validated raw data under ``root`` -> content-addressed shards + ``index.parquet`` under ``out``.
        Returns ``(index, one-line summary for the user)``. *Required.*"""
        raise NotImplementedError

    # ------------------------------------------------------------------ model and training
    def build_model(self, fcfg, model_cfg, index, *, start_weights: bool = True):
        """The network for ``model_cfg`` (a registered model), sized from the data ``index``; with
        ``start_weights`` it loads its starting weights (files are read here, never in ``models/``)."""
        from medops.models import get_model

        kw = dataclasses.asdict(model_cfg)
        return get_model(kw.pop("arch"), **kw)

    def training_datasets(self, fcfg, pre: Path, index, model_cfg):
        """``(train, val)`` torch datasets over the preprocessed shards, for the run whose resolved model
        settings are ``model_cfg`` (an ablation cell's, not always ``fcfg.model``: e.g. a cell with another
        text encoder reads its texts with that encoder's tokenizer). *Required.*"""
        raise NotImplementedError

    def task(self, net, train_cfg, train_ds):
        """The training hooks (a :class:`medops.engine.TaskModule`, usually from ``medops.tasks``). *Required.*"""
        raise NotImplementedError

    def prepare(self, fcfg, *, cell: str | None, seed: int | None, pretrain: str | None, layout) -> Prepared:
        """Resolve what one training run uses: the main model, an ablation cell, or a pretraining."""
        if pretrain is not None:
            raise MedopsError(f"--pretrain for {self.name}", "this family has no pretraining stage", "drop --pretrain")
        if cell is None:
            return Prepared(self.default_dataset(fcfg), fcfg.model, fcfg.train, layout.model_dir(self.name), "main")
        abl = fcfg.ablation
        if seed is None:
            raise MedopsError("--seed", "an ablation cell needs a seed", f"pass one of {list(abl.seeds)}")
        return Prepared(abl.cell_dataset(cell, self.default_dataset(fcfg)), abl.cell_model(cell, fcfg.model),
                        abl.cell_train(cell, fcfg.train, seed), layout.cell_dir(self.name, cell, seed), cell)

    def run_index(self, index, prepared: Prepared):
        """The preprocessed index as this run uses it (default: unchanged). A family whose ablation seeds are
        cross-validation folds re-assigns ``split`` here, so a cell's seed picks its test fold."""
        return index

    def run_tags(self, index, train_ds, task) -> dict:
        """Extra MLflow tags of a training run (e.g. class list and counts)."""
        return {}

    def after_training(self, net, val_ds, out: Path) -> list[tuple[Path, str]]:
        """Called with the best weights loaded; returns files it wrote to log as ``(path, artifact folder)``."""
        return []

    def activation(self):
        """Module that turns logits into what the registered model returns (sigmoid, softmax). *Required.*"""
        raise NotImplementedError

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, net, pre: Path, index, out: Path, *, history_csv: Path, fcfg, model_cfg) -> dict:
        """Main model on the test split: writes metrics.json, per_case.csv, figures; returns the metrics
        (``{"model": {...}, "baseline": {...}, "n_test_cases": n, ...}``). *Required.*"""
        raise NotImplementedError

    def evaluate_cell(self, net, pre: Path, index, out: Path, *, fcfg, model_cfg) -> dict:
        """An ablation cell on the test split: writes ``out/per_case.csv`` (+ figures); returns
        ``{"full": {metric: value}}``. *Required.*"""
        raise NotImplementedError

    def format_table(self, metrics: dict) -> str:
        """metrics.json -> the text table ``evaluate``/``show`` print."""
        return "\n".join(f"{k}: {v:.3f}" for k, v in metrics.get("model", {}).items())

    # ------------------------------------------------------------------ experiments
    def report(self, cells_root: Path, abl, out: Path, *, alpha: float, profile: str) -> dict:
        """The paper-shaped ablation report (tables, claims, figures, report.md, cells.csv). *Required.*"""
        raise NotImplementedError

    def compare(self, candidate_cases, champion_cases, metric: str) -> dict | None:
        """Paired test of candidate vs champion per-case results (``{"p": ..., "mean_diff": ...}``)."""
        from medops.experiments.promotion import paired_wilcoxon

        a, b = candidate_cases.set_index("case_id")[metric], champion_cases.set_index("case_id")[metric]
        return paired_wilcoxon(a, b)

    def card(self, candidate) -> list[str]:
        """Model-card lines with the candidate's test metrics (a markdown table)."""
        head = " | ".join(self.metrics)
        vals = " | ".join(f"{float(candidate[f'test_{m}']):.3f}" for m in self.metrics)
        return [f"| {head} |", "|" + "---|" * len(self.metrics), f"| {vals} |"]

    # ------------------------------------------------------------------ prediction
    def predict(self, cfg, model, inp: Path, out: Path, *, threshold: float) -> list[dict]:
        """Predict with the registered model ``model`` (a resolved :class:`medops.tracking.ModelRef`; its
        ``load()`` checks the digests and rebuilds the network from tensors) on ``inp``; write files under
        ``out``; return one summary per case. *Required.*"""
        raise NotImplementedError

    def describe_prediction(self, r: dict, out: Path) -> str:
        """One line per predicted case for the terminal."""
        return f"{r['case_id']}: {r}"


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: register a :class:`Family` subclass under ``cls.name``."""
    from medops.layout import is_safe_id

    if not cls.name or not is_safe_id(cls.name):
        raise ValueError(f"{cls.__name__}: family name {cls.name!r} must be a safe identifier (it names folders, "
                         "experiments and registered models)")
    if cls.name in _FAMILIES and _FAMILIES[cls.name] is not cls:
        raise ValueError(f"family '{cls.name}' is already registered")
    _FAMILIES[cls.name] = cls
    return cls


def load_plugins(modules=()) -> None:
    """Import the built-in family packages, the ``medops.families`` entry points and ``modules``
    (dotted names, e.g. params.yaml ``plugins:``); each registers its family on import."""
    global _DISCOVERED
    if not _DISCOVERED:
        _DISCOVERED = True
        pkg = importlib.import_module("medops.families")
        for m in pkgutil.iter_modules(pkg.__path__):
            if m.ispkg:
                importlib.import_module(f"medops.families.{m.name}")
        from importlib.metadata import entry_points

        for ep in entry_points(group="medops.families"):
            ep.load()
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise ConfigError(f"params.yaml:plugins '{mod}'", f"cannot import the family module ({exc})",
                              "install it or put its folder on PYTHONPATH") from exc


def list_families() -> list[str]:
    load_plugins()
    return sorted(_FAMILIES)


def get_family(name: str, cfg=None) -> Family:
    """The registered family ``name`` (instantiated with the config ``cfg``)."""
    load_plugins()
    if name not in _FAMILIES:
        raise ConfigError(f"family '{name}'", "unknown model family", f"use one of {sorted(_FAMILIES)}")
    return _FAMILIES[name](cfg)


def family_classes() -> dict[str, type[Family]]:
    load_plugins()
    return dict(_FAMILIES)


def family_of_dataset(cfg, dataset: str) -> Family:
    """The family a dataset belongs to: the one that simulates it, trains on it by default, or lists
    it under ``orchestration.datasets.<family>`` (your own data)."""
    for name, cls in family_classes().items():
        if name not in cfg.families:
            continue
        fam = cls(cfg)
        listed = (cfg.raw.get("orchestration", {}).get("datasets", {}) or {}).get(name, []) or []
        if dataset in cls.datasets or dataset == fam.default_dataset(cfg.family(name)) or dataset in listed:
            return fam
    known = sorted({d for c in family_classes().values() for d in c.datasets})
    raise ConfigError(f"dataset '{dataset}'", "no family uses this dataset",
                      f"use one of {known}, or list your own under orchestration.datasets.<family> in params.yaml")
