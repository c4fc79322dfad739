"""The `transfer_cls` family: rare-disease classification by transfer learning (paper 002, review 001)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from medops.errors import DataError, MedopsError
from medops.families.base import Family, Prepared, register_family
from medops.families.transfer_cls.config import (
    Classification2DPreprocessConfig, RareDiseaseConfig, TransferClsConfig,
)

METRICS = ("accuracy", "precision", "recall", "f1", "auc", "energy_in_mask", "pointing_hit", "mask_fraction")


def classes_of(index) -> list[str]:
    return [str(c) for c in index.sort_values("label_idx").drop_duplicates("label_idx").label]


@register_family
class TransferCls(Family):
    """torchvision backbones (VGG16, ResNet50, DenseNet201, Inception-v3) fine-tuned or used as feature
    extractors on small, imbalanced rare-disease sets; source-domain pretraining; Grad-CAM."""

    name = "transfer_cls"
    config_class = TransferClsConfig
    sections = {"rare_disease": RareDiseaseConfig, "preprocess_cls": Classification2DPreprocessConfig}
    datasets = ("gaucher-ct", "ocular-fundus", "nf-mri", "rare-source")
    metrics = METRICS
    selection = "val_auc"
    data_description = "rare-disease images (CT, fundus or brain MRI, see the dataset tag)"

    # data
    def default_dataset(self, fcfg) -> str:
        return fcfg.data.dataset

    def generate(self, cfg, dataset, out):
        from medops.data import rare_disease

        rd = cfg.rare_disease
        if dataset not in rd.datasets:
            raise DataError(f"dataset '{dataset}'", "no size in params.yaml",
                            f"add rare_disease.datasets.{dataset}: {{n_cases: ..., prevalence: ...}}")
        spec = rd.datasets[dataset]
        return rare_disease.generate(dataset, int(spec["n_cases"]), float(spec.get("prevalence", 0.5)), rd.size,
                                     rd.seed, cfg.split, out, workers=rd.workers,
                                     test_cases=int(spec.get("test_cases", 0)))

    def contact_sheet(self, cfg, dataset, root, png):
        from medops.data import rare_disease

        rare_disease.contact_sheet(root, png)

    def validation_spec(self, cfg, root, dataset):
        from medops.validation.gate import LABELLED_IMAGES

        return LABELLED_IMAGES

    def preprocess(self, cfg, root, out):
        from medops.preprocess.classification_2d import preprocess_classification

        idx = preprocess_classification(root, out, cfg.preprocess_cls, split_fractions=cfg.split.fractions,
                                        split_seed=cfg.split.seed)
        stats = json.loads((Path(out) / "preprocess.json").read_text())
        msg = f"preprocessed {len(idx)} cases ({stats['computed']} computed, {stats['cached']} from cache)"
        if stats.get("converted_gray_to_rgb"):
            msg += (f"; {stats['converted_gray_to_rgb']} grayscale case(s) replicated to 3 channels for the RGB "
                    "backbones")
        return idx, msg

    # model and training
    def _source_checkpoint(self, backbone: str) -> Path:
        from medops import layout

        return layout.pretrained_dir(self.name, backbone) / "best.pt"

    def build_model(self, fcfg, model_cfg, index, *, start_weights=True):
        from medops.families.transfer_cls.weights import imagenet_state, source_state
        from medops.models import get_model

        kw = dataclasses.asdict(model_cfg)
        net = get_model(kw.pop("arch"), **kw, num_classes=int(index.label_idx.max()) + 1)
        if start_weights and model_cfg.weights == "imagenet":
            net.load_imagenet(imagenet_state(model_cfg.backbone))
        elif start_weights and model_cfg.weights == "source":
            net.load_trunk(source_state(self._source_checkpoint(model_cfg.backbone), model_cfg.backbone, self.name))
        return net

    def training_datasets(self, fcfg, pre, index, model_cfg):
        from medops.data.dataset import ClassificationDataset

        return (ClassificationDataset(pre, index, "train", augment=dataclasses.asdict(fcfg.augment)),
                ClassificationDataset(pre, index, "val"))

    def task(self, net, train_cfg, train_ds):
        from medops.tasks.classification import ClassificationTask

        return ClassificationTask(net, train_cfg, dataset=train_ds)

    def prepare(self, fcfg, *, cell, seed, pretrain, layout):
        from medops.data.io import file_sha256

        if pretrain is None:
            p = super().prepare(fcfg, cell=cell, seed=seed, pretrain=None, layout=layout)
            src = self._source_checkpoint(p.model_cfg.backbone)
            extra = {"source_checkpoint": file_sha256(src)} if p.model_cfg.weights == "source" and src.exists() else {}
            return dataclasses.replace(p, extra_inputs=extra)
        if cell is not None:
            raise MedopsError("--pretrain with --cell", "a pretraining run is not an ablation cell", "pass one of them")
        if pretrain not in fcfg.pretrain.backbones:
            raise MedopsError(f"--pretrain {pretrain}", "not listed for pretraining",
                              f"use one of {list(fcfg.pretrain.backbones)} or add it to {self.name}.pretrain.backbones")
        # source-domain pretraining: the model trained from scratch on the source set with plain cross-entropy
        model_cfg = dataclasses.replace(fcfg.model, backbone=pretrain, weights="none", strategy="fine_tune")
        p = fcfg.pretrain
        train_cfg = dataclasses.replace(fcfg.train, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, loss="ce",
                                        class_weights="none", early_stopping=0)
        return Prepared(fcfg.data.source, model_cfg, train_cfg, layout.pretrained_dir(self.name, pretrain),
                        f"pretrain:{pretrain}")

    def run_tags(self, index, train_ds, task):
        import torch

        tags = {}
        if task.class_weight is not None:
            tags["class_weights"] = json.dumps([round(float(w), 4) for w in task.class_weight])
        tags["classes"] = json.dumps(classes_of(index))
        tags["train_class_counts"] = json.dumps(torch.bincount(train_ds.labels).tolist())
        tags["task"] = "classification"
        return tags

    def activation(self):
        import torch

        return torch.nn.Softmax(dim=1)

    # evaluation
    def evaluate(self, net, pre, index, out, *, history_csv, fcfg, model_cfg):
        from medops.evaluation.classification import evaluate_classification

        return evaluate_classification(net, pre, index, out, classes=classes_of(index), history_csv=history_csv,
                                       n_boot=fcfg.evaluate.bootstrap,
                                       n_figure_cases=fcfg.evaluate.gradcam_figure_cases, backbone=model_cfg.backbone)

    def evaluate_cell(self, net, pre, index, out, *, fcfg, model_cfg):
        from medops.evaluation.classification import gradcam_figure, per_case_table, summarise

        classes = classes_of(index)
        df, cams, ds = per_case_table(net, pre, index, classes, n_figure_cases=fcfg.evaluate.gradcam_figure_cases)
        df.to_csv(out / "per_case.csv", index=False)
        (out / "figures").mkdir(exist_ok=True)
        gradcam_figure(df, cams, ds, classes, out / "figures" / "gradcam.png", fcfg.evaluate.gradcam_figure_cases,
                       model_cfg.backbone)
        return {"full": summarise(df, classes, n_boot=0)["model"]}  # CIs over seeds come from the report

    def format_table(self, metrics):
        from medops.evaluation.classification import format_cls_table

        return format_cls_table(metrics)

    # experiments
    def report(self, cells_root, abl, out, *, alpha, profile):
        from medops.families.transfer_cls.report import build_report

        return build_report(cells_root, abl, out, alpha=alpha, profile=profile)

    def compare(self, cand, champ, metric):
        from medops.metrics.classification import paired_auc_test

        pos = [c for c in cand.columns if c.startswith("prob_")][-1]
        a, b = cand.set_index("case_id"), champ.set_index("case_id")
        if pos not in b or set(a.index) != set(b.index):
            return None
        b = b.loc[a.index]
        return {**paired_auc_test(a.label_idx.to_numpy(), a[pos].to_numpy(), b[pos].to_numpy()),
                "test": "paired bootstrap of AUC"}

    def card(self, c):
        return ["| accuracy | precision | recall | F1 | AUC-ROC | Grad-CAM energy in lesion | pointing game |",
                "|---|---|---|---|---|---|---|",
                f"| {c.test_accuracy:.3f} | {c.test_precision:.3f} | {c.test_recall:.3f} | {c.test_f1:.3f} | "
                f"{c.test_auc:.3f} | {c.test_energy_in_mask:.3f} | {c.test_pointing_hit:.3f} |"]

    # prediction
    def predict(self, cfg, ref, inp, out, *, threshold):
        from medops.families.transfer_cls.predict import predict_classification

        return predict_classification(ref, inp, out, cfg.preprocess_cls)

    def describe_prediction(self, r, out):
        probs = ", ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
        return f"{r['case_id']}: {r['predicted']} ({probs}) -> {out / r['gradcam_png']}"
