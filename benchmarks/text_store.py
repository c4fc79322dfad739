"""The frozen MiniLM's feature store (vl_fusion's `minilm` ablation level on the CPU profiles): how long one run
spends running the encoder over the quick dataset's texts, and how long the next run (another seed) spends
once the features are on disk — in one run, with the store's size.

The texts are what a quick `minilm` run encodes: five reference reports per case and a hard negative per
case, drawn with the simulator's phrasebook (``n_cases`` of params' quick profile), tokenised with MiniLM's
own tokenizer at the quick ``max_len``, in training batches of the quick batch size.

    python benchmarks/text_store.py [profile]      # writes results/text_store_<profile>.json
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import ROOT, save


def texts(cfg) -> list[str]:
    from medops.data import cxr_sim

    g = cfg.cxr_reports
    out = []
    for i in range(int(g.n_cases)):
        rng = np.random.default_rng([int(g.seed), i])
        state = cxr_sim.draw_state(rng)
        reps = cxr_sim.reports(state, rng)
        out += reps + [cxr_sim.hard_negative(state, reps[0], rng)[0]]
    return out


def one_run(enc, ids, mask, batch: int) -> float:
    t = time.perf_counter()
    enc.train()
    with torch.no_grad():
        for s in range(0, len(ids), batch):
            enc(ids[s:s + batch], mask[s:s + batch])
    enc.flush()
    return time.perf_counter() - t


def main(profile: str = "quick") -> dict:
    from medops.config import load_config
    from medops.families.vl_fusion import text

    cfg = load_config(ROOT / "params.yaml", profile=profile)
    pc, fam = cfg.preprocess_vl, cfg.family("vl_fusion")
    reps = texts(cfg)
    enc_tok = text.load_encoder_tokenizer()
    e = text.encode_for_encoder(enc_tok, reps, int(pc.max_len))
    ids, mask = torch.tensor(e.ids), torch.tensor(e.mask)
    store = Path(tempfile.mkdtemp(prefix="medops-text-store-"))
    try:
        first = build(store)
        t_attach0 = first[1]
        cold = one_run(first[0], ids, mask, int(fam.train.batch_size))
        second, t_attach = build(store)
        warm = one_run(second, ids, mask, int(fam.train.batch_size))
        size = sum(f.stat().st_size for f in store.rglob("*.safetensors"))
        res = {"profile": profile, "texts": len(reps), "distinct": len(set(reps)), "max_len": int(pc.max_len),
               "batch": int(fam.train.batch_size), "threads": torch.get_num_threads(),
               "first_run_s": round(cold + t_attach0, 2), "next_run_s": round(warm + t_attach, 2),
               "next_run_attach_s": round(t_attach, 2), "ratio": round((cold + t_attach0) / (warm + t_attach), 1),
               "store_mb": round(size / 2 ** 20, 1)}
    finally:
        shutil.rmtree(store, ignore_errors=True)
    print(res)
    save(f"text_store_{profile}", res)
    return res


def build(store: Path):
    """The family's frozen MiniLM text encoder (its pretrained weights), with the store attached: (encoder, s)."""
    import json

    from safetensors.torch import load_file

    from medops.families.vl_fusion.text import FeatureStore, minilm_dir
    from medops.models.vl_fusion.net import TextEncoder

    t = time.perf_counter()
    enc = TextEncoder("bert", 64, 30522, 512, json.loads((minilm_dir() / "config.json").read_text()))
    enc.net.load_state_dict(load_file(str(minilm_dir() / "model.safetensors")), strict=False)
    for p in enc.net.parameters():
        p.requires_grad_(False)
    FeatureStore(store).attach(enc)
    return enc, time.perf_counter() - t


if __name__ == "__main__":
    main(*sys.argv[1:2])
