"""A whole model family in one file, known to nothing outside tests/: the proof that the family
contract holds (see the README, "Adding a model family").

`tiny_blobs`: 32x32 grey images with or without a bright blob; a two-layer CNN says which.
It reuses the shared pieces a real family would (the labelled-image gate, the 2-D classification
preprocessing, the classification training hooks, the ablation aggregation) and brings its own
simulator, model, evaluation, report table and prediction. It is loaded by params.yaml
``plugins: [tiny_family]`` with this folder on PYTHONPATH.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from medops.config import AblationConfig, PromoteConfig, TrainConfig
from medops.families import Family, register_family
from medops.models import register_model

CLASSES = ["empty", "blob"]


# ------------------------------------------------------------------ config (params.yaml `tiny_blobs:`)
@dataclass(frozen=True)
class TinyDataConfig:
    n_cases: int = 40
    size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class TinyModelConfig:
    arch: str = "tiny_cnn"
    width: int = 4


@dataclass(frozen=True)
class TinyPreprocessConfig:
    image_size: int = 32
    equalize: str = "none"
    workers: int = 1


@dataclass(frozen=True)
class TinyConfig:
    data: TinyDataConfig = TinyDataConfig()
    preprocess: TinyPreprocessConfig = TinyPreprocessConfig()
    model: TinyModelConfig = TinyModelConfig()
    train: TrainConfig = TrainConfig()
    ablation: AblationConfig = AblationConfig()
    promote: PromoteConfig = PromoteConfig()


# ------------------------------------------------------------------ model (registered by name; torch only)
class TinyCNN(nn.Module):
    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.head(self.trunk(x))


@register_model("tiny_cnn")
def tiny_cnn(*, width: int = 4, num_classes: int = 2) -> nn.Module:
    return TinyCNN(width, num_classes)


# ------------------------------------------------------------------ the family
@register_family
class TinyBlobs(Family):
    """Blob or no blob: a family small enough to read in one sitting."""

    name = "tiny_blobs"
    config_class = TinyConfig
    datasets = ("tiny-blobs",)
    metrics = ("accuracy", "auc")
    selection = "val_auc"
    data_description = "32x32 synthetic blob images"

    def default_dataset(self, fcfg):
        return "tiny-blobs"

    def generate(self, cfg, dataset, out):
        from medops.data.io import write_png

        d = cfg.family(self.name).data
        rng = np.random.default_rng(d.seed)
        rows = []
        (out / "images").mkdir(parents=True)
        yy, xx = np.mgrid[0:d.size, 0:d.size]
        for i in range(d.n_cases):
            label = CLASSES[i % 2]
            img = rng.normal(60, 12, (d.size, d.size))
            if label == "blob":
                cy, cx = rng.uniform(8, d.size - 8, 2)
                img += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0 ** 2))
            path = f"images/case_{i:03d}.png"
            write_png(out / path, np.clip(img, 0, 255).astype(np.uint8))
            rows.append({"case_id": f"case_{i:03d}", "patient_id": f"p{i:03d}", "modality": "image", "path": path,
                         "label": label})
        man = pd.DataFrame(rows)
        n = len(man)  # interleaved classes: every split gets both
        man["split"] = ["train" if k < 0.6 * n else "val" if k < 0.8 * n else "test" for k in range(n)]
        man.to_parquet(out / "manifest.parquet", index=False)
        (out / "dataset.json").write_text(json.dumps({"dataset": dataset, "classes": CLASSES}))
        return man

    def contact_sheet(self, cfg, dataset, root, png):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from medops.data.io import read_image

        man = pd.read_parquet(root / "manifest.parquet").head(6)
        fig, axes = plt.subplots(1, len(man), figsize=(2 * len(man), 2.2))
        for ax, r in zip(axes, man.itertuples()):
            ax.imshow(read_image(root / r.path), cmap="gray")
            ax.set_title(r.label, fontsize=8)
            ax.axis("off")
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=60)
        plt.close(fig)

    def validation_spec(self, cfg, root, dataset):
        from medops.validation.gate import LABELLED_IMAGES

        return LABELLED_IMAGES

    def preprocess(self, cfg, root, out):
        from medops.preprocess.classification_2d import preprocess_classification

        idx = preprocess_classification(root, out, cfg.family(self.name).preprocess, progress=False)
        return idx, f"preprocessed {len(idx)} tiny cases"

    def build_model(self, fcfg, model_cfg, index, *, start_weights=True):
        from medops.models import get_model

        kw = dataclasses.asdict(model_cfg)
        return get_model(kw.pop("arch"), **kw, num_classes=int(index.label_idx.max()) + 1)

    def training_datasets(self, fcfg, pre, index, model_cfg):
        from medops.data.dataset import ClassificationDataset

        return ClassificationDataset(pre, index, "train"), ClassificationDataset(pre, index, "val")

    def task(self, net, train_cfg, train_ds):
        from medops.tasks.classification import ClassificationTask

        return ClassificationTask(net, train_cfg, dataset=train_ds)

    def activation(self):
        return nn.Softmax(dim=1)

    def _per_case(self, net, pre, index) -> pd.DataFrame:
        from medops.data.dataset import ClassificationDataset

        ds = ClassificationDataset(pre, index, "test")
        with torch.no_grad():
            prob = torch.softmax(net.eval()(ds.images.float()), 1)[:, 1].numpy()
        y = ds.labels.numpy()
        return pd.DataFrame({"case_id": ds.case_ids, "label_idx": y, "prob_blob": prob,
                             "accuracy": ((prob >= 0.5) == (y == 1)).astype(float)})

    def _scores(self, df: pd.DataFrame) -> dict:
        from medops.metrics.classification import classification_metrics

        p = torch.tensor(np.stack([1 - df.prob_blob, df.prob_blob], 1), dtype=torch.float32)
        m = classification_metrics(p, torch.tensor(df.label_idx.to_numpy()))
        return {"accuracy": float(df.accuracy.mean()), "auc": float(m["auc"])}

    def evaluate(self, net, pre, index, out, *, history_csv, fcfg, model_cfg):
        out.mkdir(parents=True, exist_ok=True)
        (out / "figures").mkdir(exist_ok=True)
        df = self._per_case(net, pre, index)
        df.to_csv(out / "per_case.csv", index=False)
        metrics = {"model": self._scores(df), "baseline": {"accuracy": float((df.label_idx == 0).mean()), "auc": 0.5},
                   "n_test_cases": int(len(df))}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics

    def evaluate_cell(self, net, pre, index, out, *, fcfg, model_cfg):
        df = self._per_case(net, pre, index)
        df.to_csv(out / "per_case.csv", index=False)
        return {"full": self._scores(df)}

    def format_table(self, metrics):
        return (f"tiny_blobs accuracy {metrics['model']['accuracy']:.3f} auc {metrics['model']['auc']:.3f} "
                f"(majority {metrics['baseline']['accuracy']:.3f})")

    def report(self, cells_root, abl, out, *, alpha, profile):
        from medops.experiments.ablation import collect, factor_tables, gaps_section

        out.mkdir(parents=True, exist_ok=True)
        cells = collect(cells_root, abl, self.metrics)
        cells.to_csv(out / "cells.csv", index=False)
        md = [f"# Tiny ablation ({profile})", ""]
        for factor, t in factor_tables(abl, cells, self.metrics, {}, self.metrics).items():
            t.to_csv(out / f"table_{factor}.csv", index=False)
            md += [f"## Width of the tiny CNN ({factor})", "", "| level | accuracy | auc |", "|---|---|---|"]
            md += [f"| {r.level} | {r.accuracy_mean:.3f} | {r.auc_mean:.3f} |" for r in t.itertuples()]
        md += gaps_section(cells)
        (out / "report.md").write_text("\n".join(md) + "\n")
        summary = {"n_cells": int(len(cells)), "n_finished": int((cells.status == "finished").sum())}
        (out / "summary.json").write_text(json.dumps(summary))
        return summary

    def predict(self, cfg, ref, inp, out, *, threshold):
        from medops.data.io import read_image

        model = ref.load()
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for f in sorted(Path(inp).glob("*.png")):
            x = torch.from_numpy(np.repeat(read_image(f)[None].astype(np.float32) / 255.0, 3, 0))[None]
            with torch.no_grad():
                p = float(model(x)[0, 1])
            r = {"case_id": f.stem, "p_blob": p, "predicted": CLASSES[int(p >= threshold)], "run_id": ref.run_id}
            (out / f"{f.stem}.json").write_text(json.dumps(r))
            results.append(r)
        return results

    def describe_prediction(self, r, out):
        return f"{r['case_id']}: {r['predicted']} (p blob {r['p_blob']:.2f})"
