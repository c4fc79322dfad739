"""nodule3d training throughput (patches/s of one optimiser step, CE + AUC loss) per model and scale,
and prediction throughput, at a profile's cube, channels and batch size, in one run (CPU here; CUDA
with AMP when a GPU is present). Models are built by the family's own ``build_model`` from params, so
what is timed is what ``medops train nodule3d`` trains. Ratios between rows are the comparable numbers.

    python benchmarks/n3d_throughput.py quick     # or smoke / paper
"""

from __future__ import annotations

import dataclasses
import sys

import torch

from _common import ROOT, add_ratios, save, step_rates
from medops.config import load_config
from medops.families import get_family
from medops.losses.auc import power_auc_loss


def bench(net, cube: int, batch: int, device: torch.device, steps: int) -> tuple[float, float]:
    """One optimiser step of CE + the Eq. 12 AUC term (what `ce_auc` trains), and prediction."""
    torch.manual_seed(0)
    net = net.to(device)
    x = torch.rand(batch, 1, cube, cube, cube, device=device)
    y = torch.arange(batch, device=device) % 2

    def loss(out, y):
        return torch.nn.functional.cross_entropy(out.float(), y) + power_auc_loss(torch.softmax(out.float(), 1)[:, 1], y, 2.0)

    return step_rates(net, x, y, loss, list(net.parameters()), device, steps)


def main(profile: str = "quick") -> dict:
    cfg = load_config(ROOT / "params.yaml", profile=profile)
    fam = get_family("nodule3d")
    fcfg = cfg.family("nodule3d")
    cube, batch = int(cfg.preprocess_nodule.cube), int(fcfg.train.batch_size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = 5 if device.type == "cuda" else 2
    m = fcfg.model
    rows = {}
    variants = [(f"subnet_{s}", dataclasses.replace(m, arch="nodule3d_subnet", scale=s))
                for s in ("small", "medium", "large")]
    variants += [("ensemble", dataclasses.replace(m, arch="nodule3d_ensemble")),
                 ("ifm", dataclasses.replace(m, arch="nodule3d_ifm")),
                 ("monai_resnet3d", dataclasses.replace(m, arch="monai_resnet3d")),
                 ("monai_densenet3d", dataclasses.replace(m, arch="monai_densenet3d"))]
    for name, mc in variants:
        net = fam.build_model(fcfg, mc, None, start_weights=False)
        train, pred = bench(net, cube, batch, device, steps)
        n_params = sum(p.numel() for p in net.parameters())
        crop = {"subnet_small": m.scales[0], "subnet_medium": m.scales[1]}.get(name, max(m.scales))
        rows[name] = {"crop": int(crop), "params": n_params, "train_patches_s": round(train, 1),
                      "predict_patches_s": round(pred, 1)}
        print(name, rows[name], flush=True)
    add_ratios(rows, "train_patches_s", "ensemble", "train_speed_vs_ensemble")
    res = {"profile": profile, "cube": cube, "batch_size": batch, "device": str(device),
           "threads": torch.get_num_threads(), "models": rows}
    save(f"n3d_throughput_{profile}_{device.type}", res)
    return res


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick")
