"""Does the channels-last memory layout speed up training on this CPU? One optimiser step (forward, backward,
Adam) of each family's quick model in the default layout (NCHW / NCDHW) and in channels-last
(NHWC / NDHWC), the two interleaved round by round so drift on a shared machine hits both; medians compared.
Also how fast the machine was (``medops run``'s machine reference: threads, fp32 matmul rate, one
ResNet-18 step), so that times measured on different days can be compared.

    python benchmarks/cpu_layout.py quick          # or smoke; writes results/cpu_layout_<profile>.json

``train.channels_last: auto`` uses what this measures (see ``medops.engine.policy``)."""

from __future__ import annotations

import statistics
import sys
import time

import torch

from _common import ROOT, save
from medops.config import load_config
from medops.families import get_family
from medops.models import get_model
from medops.runs.pipeline import machine_reference


def _image_loss(net, batch):
    out = net(batch[0])
    return (out if torch.is_tensor(out) else out[0]).float().square().mean()


def _vl_batch(cfg):
    """A vl_fusion training batch at the quick profile's sizes (what ``VLFusionTask.train_step`` reads)."""
    g = torch.Generator().manual_seed(0)
    pc, b = cfg.preprocess_vl, int(cfg.family("vl_fusion").train.batch_size)
    vocab, max_len = 600, int(pc.max_len)
    ids = torch.randint(4, vocab, (b, max_len), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2
    mask = torch.ones_like(ids)
    return [torch.rand(b, 3, pc.image_size, pc.image_size, generator=g), ids[:, 1:7].clone(),
            torch.ones(b, 6, dtype=torch.long), ids, mask, ids.roll(1, 0), mask, torch.randint(0, 3, (b,), generator=g)]


def workloads(cfg) -> dict:
    """name -> (net factory, batch factory, loss(net, batch)): what each family's quick ablation trains."""
    from medops.config import TrainConfig
    from medops.families.vl_fusion.family import model_kwargs
    from medops.families.vl_fusion.task import VLFusionTask

    fs, n3, vl = cfg.family("fusion_seg"), cfg.family("nodule3d"), cfg.family("vl_fusion")
    size, cls_batch = cfg.preprocess_cls.image_size, cfg.family("transfer_cls").train.batch_size
    cube, seg = int(cfg.preprocess_nodule.cube), cfg.preprocess.image_size

    def vl_loss(net, batch):
        return VLFusionTask(net, TrainConfig()).train_step(batch)

    return {
        "fusion_seg (attention fusion)": (lambda: get_family("fusion_seg").build_model(fs, fs.model, None),
                                          lambda: [torch.rand(fs.train.batch_size, len(fs.model.modalities), seg, seg)],
                                          _image_loss),
        "transfer_cls densenet201": (lambda: get_model("transfer_cls", backbone="densenet201", num_classes=2),
                                     lambda: [torch.rand(cls_batch, 3, size, size)], _image_loss),
        "transfer_cls resnet50": (lambda: get_model("transfer_cls", backbone="resnet50", num_classes=2),
                                  lambda: [torch.rand(cls_batch, 3, size, size)], _image_loss),
        "nodule3d ensemble (3-D)": (lambda: get_family("nodule3d").build_model(n3, n3.model, None, start_weights=False),
                                    lambda: [torch.rand(int(n3.train.batch_size), 1, cube, cube, cube)], _image_loss),
        "vl_fusion (image trunk + text, Eq. 4 loss)": (
            lambda: get_model(vl.model.arch, **model_kwargs(vl.model, vocab_size=600, image_size=cfg.preprocess_vl.image_size,
                                                            max_len=int(cfg.preprocess_vl.max_len))),
            lambda: _vl_batch(cfg), vl_loss),
    }


def stepper(make, batch_of, loss_of, channels_last: bool):
    """One optimiser step as the trainer takes it: the net and the batch's image tensor in the layout."""
    torch.manual_seed(0)
    net, batch = make(), batch_of()
    if channels_last:
        dims = batch[0].dim()
        fmt = torch.channels_last_3d if dims == 5 else torch.channels_last
        net = net.to(memory_format=fmt)
        batch = [b.contiguous(memory_format=fmt) if b.is_floating_point() and b.dim() == dims else b for b in batch]
    net.train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 1e-4)

    def step() -> float:
        t = time.perf_counter()
        loss = loss_of(net, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    step()   # warm-up (oneDNN picks its kernels)
    return step


def main(profile: str = "quick", rounds: int = 4) -> dict:
    cfg = load_config(ROOT / "params.yaml", profile=profile)
    rows = {}
    for name, (make, batch_of, loss_of) in workloads(cfg).items():
        a, b = stepper(make, batch_of, loss_of, False), stepper(make, batch_of, loss_of, True)
        ta, tb = [], []
        for _ in range(rounds):
            ta.append(a())
            tb.append(b())
        ma, mb = statistics.median(ta), statistics.median(tb)
        rows[name] = {"default_s_per_step": round(ma, 3), "channels_last_s_per_step": round(mb, 3),
                      "speed_up": round(ma / mb, 2)}
        print(name, rows[name], flush=True)
    res = {"profile": profile, "rounds": rounds, "machine": machine_reference(), "torch": torch.__version__,
           "models": rows}
    save(f"cpu_layout_{profile}", res)
    return res


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick")
