"""The `nodule3d` family: lung-nodule malignancy from CT with a multi-scale 3-D CNN ensemble and an
AUC loss (paper 004), on nodules drawn from the real LIDC-IDRI annotations."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from medops.errors import ConfigError
from medops.families.base import Family, register_family
from medops.families.nodule3d.config import LidcSimConfig, Nodule3DConfig, NodulePreprocessConfig

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")


def _validation_spec():
    from medops.validation.gate import DatasetSpec

    from medops.families.nodule3d.checks import build_manifest, check_series_and_nodules

    return DatasetSpec(modalities={"ct": {"min_size": 32, "dtypes": ["uint16", "int16", "float32"], "max": None}},
                       required=("ct",), labelled=False, mask_not_empty=False, present_only=True,
                       extra_checks=check_series_and_nodules, extra_files=lambda root: ["nodules.csv"],
                       manifest_builder=build_manifest)


def rating3_policy(index, policy: str):
    """Nodules rated 3 (indeterminate; ``malignancy == 3`` in nodules.csv, labelled benign there) are kept in
    training and validation under ``benign`` and dropped under ``exclude``; they never enter a test split, so
    every cell and the champion are compared on the same clear-cut nodules."""
    if "malignancy" not in index:
        return index
    r3 = index.malignancy.fillna(0).astype(float) == 3
    drop = r3 & ((index.split == "test") | (policy == "exclude"))
    return index[~drop].reset_index(drop=True)


_SCALE = {"small": 0, "medium": 1, "large": -1}
_MODEL_KWARGS = {   # registered model -> its keyword arguments from the model config
    "nodule3d_ensemble": lambda m: {"scales": list(m.scales), "channels": list(m.channels), "hidden": m.hidden,
                                    "dropout": m.dropout},
    "nodule3d_subnet": lambda m: {"scale": int(m.scales[_SCALE[m.scale]]), "channels": list(m.channels),
                                  "hidden": m.hidden, "dropout": m.dropout},
    "nodule3d_ifm": lambda m: {"cube": int(max(m.scales)), "branches": list(m.branches), "channels": list(m.channels),
                               "hidden": m.hidden, "dropout": m.dropout},
    "monai_resnet3d": lambda m: {"scale": int(max(m.scales)), "layers": list(m.resnet_layers),
                                 "widths": list(m.resnet_widths)},
    "monai_densenet3d": lambda m: {"scale": int(max(m.scales)), "block_config": list(m.densenet_block_config)},
}


@register_family
class Nodule3D(Family):
    """Multi-scale 3-D CNN ensemble (32/48/64-voxel crops, Eq. 4), CE + power AUC loss (Eq. 12-13), the
    paper's image fusion model (IFM) and MONAI 3-D ResNet/DenseNet baselines on CT nodule cubes."""

    name = "nodule3d"
    config_class = Nodule3DConfig
    sections = {"lidc_sim": LidcSimConfig, "preprocess_nodule": NodulePreprocessConfig}
    datasets = ("lidc-sim",)
    metrics = METRICS
    selection = "val_auc"
    data_description = "CT nodule cubes (simulated chest CT around real LIDC-IDRI nodule shapes and ratings)"
    limitations = (
        "Images are simulated from CT physics; only the nodules' shapes (one reader's contours) and malignancy "
        "ratings are real (LIDC-IDRI). Performance on real CT is unknown; no external validation.",
        "Labels are radiologists' malignancy ratings (aggregated), not pathology; rating 3 (indeterminate) is "
        "excluded from training by default (model.rating3) and always from the test folds.",
        "Nodule centres are given, not detected: a classifier of known nodules, not a detector.",
        "Metrics are mean ± std over patient-level folds; per-nodule tests treat nodules of one scan as independent.")

    def check_config(self, fcfg) -> None:
        m = fcfg.model
        if m.arch == "nodule3d_ensemble" and len(m.scales) < 2:
            raise ConfigError("params.yaml:nodule3d.model.scales", f"{list(m.scales)}: an ensemble needs 2+ scales",
                              "e.g. [32, 48, 64]")
        if len(fcfg.train.auc_alpha) < 1:
            raise ConfigError("params.yaml:nodule3d.train.auc_alpha", "empty", "one alpha per scale, e.g. [0.5, 0.75, 1.0]")

    # data
    def default_dataset(self, fcfg) -> str:
        return fcfg.dataset

    def generate(self, cfg, dataset, out):
        from medops.data import lidc_sim

        return lidc_sim.generate(cfg.lidc_sim, cfg.split, out)

    def contact_sheet(self, cfg, dataset, root, png):
        from medops.data import lidc_sim

        lidc_sim.contact_sheet(root, png)

    def validation_spec(self, cfg, root, dataset):
        return _validation_spec()

    def preprocess(self, cfg, root, out):
        from medops.preprocess.nodule_patches import preprocess_nodules

        from medops.families.nodule3d.checks import build_manifest

        root = Path(root)
        man = None if (root / "manifest.parquet").exists() else build_manifest(root, cfg.split.fractions, cfg.split.seed)
        idx = preprocess_nodules(root, out, cfg.preprocess_nodule, manifest=man, fold_seed=cfg.split.seed)
        stats = json.loads((Path(out) / "preprocess.json").read_text())
        msg = (f"preprocessed {len(idx)} nodules from {stats['n_scans']} scans ({stats['computed']} computed, "
               f"{stats['cached']} from cache); {stats['padded_patches']} patch(es) padded with air")
        return idx, msg

    # model and training
    def build_model(self, fcfg, model_cfg, index, *, start_weights=True):
        from medops.models import get_model

        m = model_cfg
        return get_model(m.arch, **_MODEL_KWARGS[m.arch](m), num_classes=2)

    def prepare(self, fcfg, *, cell, seed, pretrain, layout):
        p = super().prepare(fcfg, cell=cell, seed=seed, pretrain=pretrain, layout=layout)
        m = p.model_cfg
        if isinstance(m.branches, str):                  # an ablation level such as "macro" or "macro_micro"
            p = dataclasses.replace(p, model_cfg=dataclasses.replace(m, branches=tuple(m.branches.split("_"))))
        return p

    def run_index(self, index, prepared):
        """An ablation cell's seed is its fold: test on fold k, select on fold k+1, train on the rest (patient-
        level folds from the simulator or your nodules.csv). The main model keeps the dataset's split."""
        import numpy as np

        if prepared.kind != "main" and "fold" in index and not (index.fold < 0).any():
            k = int(index.fold.max()) + 1
            test = int(prepared.train_cfg.seed) % k
            val = (test + 1) % k
            index = index.assign(split=np.where(index.fold == test, "test", np.where(index.fold == val, "val", "train")))
        return rating3_policy(index, prepared.model_cfg.rating3)

    def training_datasets(self, fcfg, pre, index, model_cfg):
        from medops.families.nodule3d.data import NoduleDataset

        return (NoduleDataset(pre, index, "train", augment=dataclasses.asdict(fcfg.augment)),
                NoduleDataset(pre, index, "val"))

    def task(self, net, train_cfg, train_ds):
        from medops.families.nodule3d.task import Nodule3DTask

        fcfg = self.cfg.family(self.name) if self.cfg is not None else Nodule3DConfig()
        return Nodule3DTask(net, train_cfg, dataset=train_ds, weight_step=fcfg.evaluate.weight_step)

    def run_tags(self, index, train_ds, task):
        import torch

        return {"classes": json.dumps(["benign", "malignant"]), "task": "classification",
                "train_class_counts": json.dumps(torch.bincount(train_ds.labels, minlength=2).tolist()),
                "loss_alphas": json.dumps([float(fn.alpha) for fn in task.losses])}

    def activation(self):
        import torch

        return torch.nn.Softmax(dim=1)

    # evaluation
    def evaluate(self, net, pre, index, out, *, history_csv, fcfg, model_cfg):
        from medops.families.nodule3d.data import NoduleDataset
        from medops.families.nodule3d.evaluation import evaluate_nodules

        return evaluate_nodules(net, NoduleDataset(pre, rating3_policy(index, "exclude"), "test"), out,
                                history_csv=history_csv,
                                n_boot=fcfg.evaluate.bootstrap)

    def evaluate_cell(self, net, pre, index, out, *, fcfg, model_cfg):
        from medops.families.nodule3d.data import NoduleDataset
        from medops.families.nodule3d.evaluation import evaluate_nodules

        m = evaluate_nodules(net, NoduleDataset(pre, rating3_policy(index, "exclude"), "test"), out, n_boot=0)
        return {"full": m["model"]}

    def format_table(self, metrics):
        from medops.evaluation.classification import format_cls_table

        lines = [format_cls_table(metrics)]
        if metrics.get("submodel_auc"):
            lines.append("sub-model AUC: " + ", ".join(f"{k}: {v:.3f}" for k, v in metrics["submodel_auc"].items())
                         + "; ensemble weights " + ", ".join(f"{k}: {v:.1f}" for k, v in metrics["ensemble_weights"].items()))
        return "\n".join(lines)

    def report(self, cells_root, abl, out, *, alpha, profile):
        from medops.families.nodule3d.report import build_report

        return build_report(cells_root, abl, out, alpha=alpha, profile=profile)

    def compare(self, cand, champ, metric):
        from medops.metrics.classification import paired_auc_test

        a, b = cand.set_index("case_id"), champ.set_index("case_id")
        if "prob_malignant" not in b or set(a.index) != set(b.index):
            return None
        b = b.loc[a.index]
        return {**paired_auc_test(a.label_idx.to_numpy(), a.prob_malignant.to_numpy(), b.prob_malignant.to_numpy()),
                "test": "paired bootstrap of AUC"}

    def predict(self, cfg, ref, inp, out, *, threshold):
        from medops.families.nodule3d.predict import predict_nodules

        return predict_nodules(ref, inp, out, cfg.preprocess_nodule)

    def describe_prediction(self, r, out):
        subs = ", ".join(f"{k}: {v:.3f}" for k, v in r["submodel_malignant"].items())
        return (f"{r['case_id']}: {r['predicted']} (p malignant {r['probabilities']['malignant']:.3f}"
                + (f"; sub-models {subs}" if subs else "") + f") -> {out / r['gradcam_png']}")
