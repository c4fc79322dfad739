"""Model families: name -> task type, datasets, training hooks, evaluation, report. Adding a
family adds an entry here (plus its models/ subpackage and params.yaml section); the CLI,
trainer, tracking, ablation, promotion, DVC stages, DAG and pipeline factories stay as they are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medops.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    task_type: str                 # segmentation | classification
    task: Callable                 # (net, TrainConfig, dataset=train_ds) -> TaskModule
    default_dataset: Callable      # (family config) -> dataset name
    datasets: Callable             # (pre_dir, index, family config) -> (train_ds, val_ds)
    model_kwargs: Callable         # (family config, model config, index) -> extra builder kwargs
    evaluate: Callable             # main model on the test split -> metrics.json dict
    evaluate_cell: Callable        # ablation cell on the test split -> {"full": metrics}; writes per_case.csv
    activation: Callable           # () -> module turning logits into what the registered model returns
    format_table: Callable         # metrics.json dict -> text table
    report: Callable               # (cells_root, ablation, out, alpha=, profile=) -> summary
    metrics: tuple                 # test metrics of a cell (status.json "test")
    selection: str                 # validation metric (history column, higher = better) that picks the candidate
    compare: Callable              # (candidate per_case.csv, champion per_case.csv, metric) -> dict | None
    card: Callable                 # (candidate row) -> model-card lines


# ---------------------------------------------------------------- fusion_seg
def _seg_datasets(pre, index, fcfg):
    from medops.data.dataset import ShardDataset

    return ShardDataset(pre, index, "train"), ShardDataset(pre, index, "val")


def _seg_evaluate(net, pre, index, out, *, history_csv, fcfg, model_cfg):
    from medops.evaluation.segmentation import evaluate_segmentation

    return evaluate_segmentation(net, pre, index, out, history_csv=history_csv, modalities=model_cfg.modalities,
                                 threshold=fcfg.evaluate.threshold)


def _seg_cell(net, pre, index, out, *, fcfg, model_cfg):
    from medops.evaluation.segmentation import evaluate_conditions

    return evaluate_conditions(net, pre, index, out, modalities=model_cfg.modalities, threshold=fcfg.evaluate.threshold)


def _seg_compare(cand, champ, metric):
    from medops.experiments.promotion import paired_wilcoxon

    def full(df):  # all modalities present (cells also record missing-modality conditions)
        return (df.query("condition == 'full'") if "condition" in df else df).set_index("case_id")[metric]

    return paired_wilcoxon(full(cand), full(champ))


def _seg_card(c):
    return ["| DSC | IoU | sensitivity | specificity |", "|---|---|---|---|",
            f"| {c.test_dsc:.3f} | {c.test_iou:.3f} | {c.test_sensitivity:.3f} | {c.test_specificity:.3f} |"]


def _sigmoid():
    import torch

    return torch.nn.Sigmoid()


def _seg_table(m):
    from medops.evaluation.segmentation import format_table

    return format_table(m)


def _seg_report(*a, **k):
    from medops.experiments.report import build_report

    return build_report(*a, **k)


def _fusion_seg() -> Family:
    from medops.models.fusion_seg.task import SegmentationTask

    return Family("fusion_seg", "segmentation", SegmentationTask, lambda fcfg: "breast-trimodal", _seg_datasets,
                  lambda fcfg, mcfg, index: {}, _seg_evaluate, _seg_cell, _sigmoid, _seg_table, _seg_report,
                  ("dsc", "iou", "sensitivity", "specificity"), "val_dice", _seg_compare, _seg_card)


# ---------------------------------------------------------------- transfer_cls
def classes_of(index) -> list[str]:
    return [str(c) for c in index.sort_values("label_idx").drop_duplicates("label_idx").label]


def pretrained_dir(family: str, backbone: str) -> Path:
    return Path("models") / family / "pretrained" / backbone


def _cls_datasets(pre, index, fcfg):
    from dataclasses import asdict

    from medops.data.dataset import ClassificationDataset

    return (ClassificationDataset(pre, index, "train", augment=asdict(fcfg.augment)),
            ClassificationDataset(pre, index, "val"))


def _cls_model_kwargs(fcfg, mcfg, index):
    n = int(index.label_idx.max()) + 1
    return {"num_classes": n, "source_checkpoint": str(pretrained_dir("transfer_cls", mcfg.backbone) / "best.pt")}


def _cls_evaluate(net, pre, index, out, *, history_csv, fcfg, model_cfg):
    from medops.evaluation.classification import evaluate_classification

    return evaluate_classification(net, pre, index, out, classes=classes_of(index), history_csv=history_csv,
                                   n_boot=fcfg.evaluate.bootstrap, n_figure_cases=fcfg.evaluate.gradcam_figure_cases,
                                   backbone=model_cfg.backbone)


def _cls_cell(net, pre, index, out, *, fcfg, model_cfg):
    from medops.evaluation.classification import gradcam_figure, per_case_table, summarise

    classes = classes_of(index)
    df, cams, ds = per_case_table(net, pre, index, classes)
    df.to_csv(out / "per_case.csv", index=False)
    (out / "figures").mkdir(exist_ok=True)
    gradcam_figure(df, cams, ds, classes, out / "figures" / "gradcam.png", fcfg.evaluate.gradcam_figure_cases,
                   model_cfg.backbone)
    return {"full": summarise(df, classes, n_boot=0)["model"]}  # CIs over seeds come from the report


def _cls_compare(cand, champ, metric):
    from medops.metrics.classification import paired_auc_test

    pos = [c for c in cand.columns if c.startswith("prob_")][-1]
    a, b = cand.set_index("case_id"), champ.set_index("case_id")
    if pos not in b or set(a.index) != set(b.index):
        return None
    b = b.loc[a.index]
    return {**paired_auc_test(a.label_idx.to_numpy(), a[pos].to_numpy(), b[pos].to_numpy()),
            "test": "paired bootstrap of AUC"}


def _cls_card(c):
    return ["| accuracy | precision | recall | F1 | AUC-ROC | Grad-CAM energy in lesion | pointing game |",
            "|---|---|---|---|---|---|---|",
            f"| {c.test_accuracy:.3f} | {c.test_precision:.3f} | {c.test_recall:.3f} | {c.test_f1:.3f} | "
            f"{c.test_auc:.3f} | {c.test_energy_in_mask:.3f} | {c.test_pointing_hit:.3f} |"]


def _softmax():
    import torch

    return torch.nn.Softmax(dim=1)


def _cls_table(m):
    from medops.evaluation.classification import format_cls_table

    return format_cls_table(m)


def _cls_report(*a, **k):
    from medops.experiments.report_cls import build_cls_report

    return build_cls_report(*a, **k)


def _transfer_cls() -> Family:
    from medops.models.transfer_cls.task import ClassificationTask

    return Family("transfer_cls", "classification", ClassificationTask, lambda fcfg: fcfg.data.dataset,
                  _cls_datasets, _cls_model_kwargs, _cls_evaluate, _cls_cell, _softmax, _cls_table, _cls_report,
                  ("accuracy", "precision", "recall", "f1", "auc", "energy_in_mask", "pointing_hit", "mask_fraction"),
                  "val_auc", _cls_compare, _cls_card)


_FAMILIES = {"fusion_seg": _fusion_seg, "transfer_cls": _transfer_cls}


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ConfigError(f"family '{name}'", "unknown model family", f"use one of {sorted(_FAMILIES)}")
    return _FAMILIES[name]()


def list_families() -> list[str]:
    return sorted(_FAMILIES)
