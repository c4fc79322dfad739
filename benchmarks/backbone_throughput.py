"""Images/s per transfer_cls backbone, training step (fine-tuning and feature extraction) and
prediction, at the profile's image size and batch size, in one run (CPU here; CUDA with AMP when
a GPU is present). Ratios between backbones are the comparable numbers."""

from __future__ import annotations

import sys

import torch

from _common import ROOT, add_ratios, save, step_rates
from medops.config import load_config
from medops.models import get_model


def bench(backbone: str, size: int, batch: int, strategy: str, device: torch.device, steps: int = 3) -> tuple[float, float]:
    torch.manual_seed(0)
    net = get_model("transfer_cls", backbone=backbone, num_classes=2, strategy=strategy).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    return step_rates(net, x, y, torch.nn.functional.cross_entropy,
                      [p for p in net.parameters() if p.requires_grad], device, steps)


def main(profile: str = "quick") -> dict:
    cfg = load_config(ROOT / "params.yaml", profile=profile)
    size, batch = cfg.preprocess_cls.image_size, cfg.family("transfer_cls").train.batch_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = {}
    for b in ("vgg16", "resnet50", "densenet201", "inception_v3"):
        ft_train, pred = bench(b, size, batch, "fine_tune", device)
        fe_train, _ = bench(b, size, batch, "feature_extraction", device)
        rows[b] = {"train_fine_tune_img_s": round(ft_train, 1), "train_feature_extraction_img_s": round(fe_train, 1),
                   "predict_img_s": round(pred, 1)}
        print(b, rows[b], flush=True)
    add_ratios(rows, "train_fine_tune_img_s", "densenet201", "train_speed_vs_densenet201")
    res = {"profile": profile, "image_size": size, "batch_size": batch, "device": str(device),
           "threads": torch.get_num_threads(), "backbones": rows}
    save(f"backbone_throughput_{profile}_{device.type}", res)
    return res


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick")
