"""vl_fusion throughput on this machine, in one run: training images/s (one optimiser step of the Eq. 4 loss:
triage CE + contrastive over own / hard-negative / in-batch pairs + sequence CE) and generation tokens/s
(greedy, batched, and beam 3), for the paper's DenseNet121 trunk and a small one at ``image_size``, and for the
quick profile's model from params.yaml (ALBERT, and the frozen pretrained MiniLM level) at the quick image size.

    python benchmarks/vl_throughput.py [image_size] [batch]
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from _common import save


def main(image_size: int = 128, batch: int = 16) -> dict:
    from medops.config import TrainConfig
    from medops.families.vl_fusion.task import VLFusionTask
    from medops.models import get_model

    torch.manual_seed(0)
    vocab, max_len = 600, 64
    res = {"image_size": image_size, "batch": batch, "max_len": max_len, "threads": torch.get_num_threads(), "rows": []}
    g = torch.Generator().manual_seed(0)
    img = torch.rand(batch, 3, image_size, image_size, generator=g)
    ids = torch.randint(4, vocab, (batch, max_len), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2
    mask = torch.ones_like(ids)
    prompt, pmask = ids[:, 1:7].clone(), torch.ones(batch, 6, dtype=torch.long)
    tri = torch.randint(0, 3, (batch,), generator=g)
    batch_t = (img, prompt, pmask, ids, mask, ids.roll(1, 0), mask, tri)
    text_cfg = {"embedding_size": 64, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 256}
    from pathlib import Path

    from medops.config import load_config
    from medops.families.vl_fusion.family import model_kwargs

    quick = load_config(Path(__file__).resolve().parents[1] / "params.yaml", profile="quick")
    qm, qsize = quick.family("vl_fusion").model, quick.preprocess_vl.image_size
    nets = []
    for name, blocks, fusion in (("DenseNet121 + CBAM, cross-attention", (6, 12, 24, 16), "cross"),
                                 ("small DenseNet (2,4,6,4) + CBAM, cross-attention", (2, 4, 6, 4), "cross"),
                                 ("small DenseNet, LSTM-attention captioner", (2, 4, 6, 4), None)):
        kw = dict(vocab_size=vocab, image_size=image_size, width=128, heads=4, cross_layers=1, decoder_layers=2,
                  max_len=max_len, block_config=blocks, text_config=text_cfg)
        nets.append((name, image_size, fusion,
                     lambda kw=kw, fusion=fusion: get_model("vl_lstm_attention", **kw) if fusion is None
                     else get_model("vl_fusion", fusion=fusion, **kw)))
    for name, m in ((f"quick profile model ({qsize}², ALBERT)", qm),
                    (f"quick profile model ({qsize}², frozen MiniLM)", dataclasses.replace(qm, text_encoder="minilm"))):
        def build(m=m):
            net = get_model(m.arch, **model_kwargs(m, vocab_size=vocab, image_size=qsize, max_len=max_len))
            if m.text_encoder == "minilm":
                net.text.net.requires_grad_(False)      # weights do not matter for speed: frozen as at quick
            return net
        nets.append((name, qsize, "cross", build))
    for name, size, fusion, make in nets:
        if size != img.shape[-1]:
            img = torch.rand(batch, 3, size, size, generator=g)
            batch_t = (img,) + batch_t[1:]
        net = make()
        cfg = dataclasses.replace(TrainConfig(), lr=1e-3, batch_size=batch, monitor="val_loss")
        task = VLFusionTask(net, cfg)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()
        for _ in range(1):                                   # warm-up
            opt.zero_grad()
            task.train_step(batch_t).backward()
            opt.step()
        steps, t0 = 3, time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            task.train_step(batch_t).backward()
            opt.step()
        train_ips = steps * batch / (time.perf_counter() - t0)
        net.eval()
        row = {"model": name, "image_size": size,
               "parameters_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
               "train_images_per_s": round(train_ips, 2)}
        for beam in (1, 3):
            t0 = time.perf_counter()
            out = net.generate(img[:4], prompt[:4], pmask[:4], max_len=32, beam=beam)
            dt = time.perf_counter() - t0
            n_tok = sum(len(o) + 1 for o in out)
            row[f"generate_beam{beam}_tokens_per_s"] = round(n_tok / dt, 1)
            if fusion is None:
                break
        res["rows"].append(row)
        print(row, flush=True)
    save("vl_throughput", res)
    return res


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
