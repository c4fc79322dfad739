"""The `fusion_seg` family: tri-modal breast tumour segmentation (paper 000) — its hooks."""

from __future__ import annotations

import json
from pathlib import Path

from medops.errors import ConfigError
from medops.families.base import Family, register_family
from medops.families.fusion_seg.config import BreastPreprocessConfig, BreastTrimodalConfig, FusionSegConfig

METRICS = ("dsc", "iou", "sensitivity", "specificity")


@register_family
class FusionSeg(Family):
    """Tumour masks from co-registered US, MG and MRI (paper 000); MONAI U-Net baselines (review 001)."""

    name = "fusion_seg"
    config_class = FusionSegConfig
    sections = {"generate": BreastTrimodalConfig, "preprocess": BreastPreprocessConfig}
    datasets = ("breast-trimodal",)
    metrics = METRICS
    selection = "val_dice"
    data_description = "tri-modal breast images (US, MG, MRI)"

    def check_config(self, fcfg) -> None:
        from medops.families.fusion_seg.config import MODALITIES

        bad = set(fcfg.model.modalities) - set(MODALITIES)
        if bad or not fcfg.model.modalities:
            raise ConfigError(f"params.yaml:{self.name}.model.modalities", f"unknown modality {sorted(bad)}",
                              f"choose a non-empty subset of {MODALITIES}")

    # data
    def default_dataset(self, fcfg) -> str:
        return "breast-trimodal"

    def generate(self, cfg, dataset, out):
        from medops.data import breast_trimodal

        return breast_trimodal.generate(cfg.generate, cfg.split, out)

    def contact_sheet(self, cfg, dataset, root, png):
        from medops.data import breast_trimodal

        breast_trimodal.contact_sheet(root, png)

    def validation_spec(self, cfg, root, dataset):
        from medops.validation.gate import FIXED_GEOMETRY

        return FIXED_GEOMETRY

    def preprocess(self, cfg, root, out):
        from medops.preprocess.breast_trimodal import preprocess_dataset

        idx = preprocess_dataset(root, out, cfg.preprocess)
        stats = json.loads((Path(out) / "preprocess.json").read_text())
        msg = f"preprocessed {len(idx)} cases ({stats['computed']} computed, {stats['cached']} from cache)"
        if "reg_error_after_px" in stats:
            msg += (f"; MRI->US registration error {stats['reg_error_before_px']:.2f} px -> "
                    f"{stats['reg_error_after_px']:.2f} px (mean)")
        return idx, msg

    # model and training
    def training_datasets(self, fcfg, pre, index, model_cfg):
        from medops.data.dataset import SegmentationShardDataset

        return SegmentationShardDataset(pre, index, "train"), SegmentationShardDataset(pre, index, "val")

    def task(self, net, train_cfg, train_ds):
        from medops.tasks.segmentation import SegmentationTask

        return SegmentationTask(net, train_cfg, dataset=train_ds)

    def after_training(self, net, val_ds, out):
        import torch

        if not hasattr(net, "attention_weights_full"):  # MONAI baselines have no fusion weights
            return []
        with torch.no_grad():
            net.eval()(val_ds.images[:2].float())  # fresh attention weights from the best model
        (out / "attention_weights.json").write_text(json.dumps(net.attention_weights_full()))
        return [(out / "attention_weights.json", "attention")]

    def activation(self):
        import torch

        return torch.nn.Sigmoid()

    # evaluation
    def evaluate(self, net, pre, index, out, *, history_csv, fcfg, model_cfg):
        from medops.families.fusion_seg.evaluation import evaluate_segmentation

        return evaluate_segmentation(net, pre, index, out, history_csv=history_csv, modalities=model_cfg.modalities,
                                     threshold=fcfg.evaluate.threshold)

    def evaluate_cell(self, net, pre, index, out, *, fcfg, model_cfg):
        from medops.families.fusion_seg.evaluation import evaluate_conditions

        return evaluate_conditions(net, pre, index, out, modalities=model_cfg.modalities,
                                   threshold=fcfg.evaluate.threshold)

    def format_table(self, metrics):
        from medops.families.fusion_seg.evaluation import format_table

        return format_table(metrics)

    # experiments
    def report(self, cells_root, abl, out, *, alpha, profile):
        from medops.families.fusion_seg.report import build_report

        return build_report(cells_root, abl, out, alpha=alpha, profile=profile)

    def compare(self, candidate_cases, champion_cases, metric):
        from medops.experiments.promotion import paired_wilcoxon

        def full(df):  # all modalities present (cells also record missing-modality conditions)
            return (df.query("condition == 'full'") if "condition" in df else df).set_index("case_id")[metric]

        return paired_wilcoxon(full(candidate_cases), full(champion_cases))

    def card(self, c):
        return ["| DSC | IoU | sensitivity | specificity |", "|---|---|---|---|",
                f"| {c.test_dsc:.3f} | {c.test_iou:.3f} | {c.test_sensitivity:.3f} | {c.test_specificity:.3f} |"]

    # prediction
    def predict(self, cfg, ref, inp, out, *, threshold):
        from medops.families.fusion_seg.predict import predict

        return predict(ref, inp, out, cfg.validate, cfg.preprocess, threshold)

    def describe_prediction(self, r, out):
        return (f"{r['case_id']}: tumour fraction {r['tumour_fraction']:.3f}, max p {r['max_probability']:.2f} "
                f"-> {out / r['mask_png']}")

