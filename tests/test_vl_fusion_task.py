"""vl_fusion training hooks (Eq. 1-4) through the shared trainer on simulated radiographs and reports:
the multi-task loss falls, the contrastive term is the paper's Eq. 2, and variants without matching
features train without it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medops.config import TrainConfig
from medops.data import cxr_sim
from medops.families.vl_fusion import text
from medops.families.vl_fusion.task import VLFusionTask, contrastive
from medops.models import get_model

SMALL = dict(image_size=64, width=32, heads=4, cross_layers=1, decoder_layers=1, max_len=48,
             block_config=(1, 1), growth_rate=8, init_features=16, embed_dim=16,
             text_config={"embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                          "intermediate_size": 64})


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(24):
        st = cxr_sim.draw_state(rng)
        img, _ = cxr_sim.render(st, rng, 64)
        rep = cxr_sim.reports(st, rng, 1)[0]
        rows.append((img, rep, cxr_sim.hard_negative(st, rep, rng)[0], cxr_sim.TRIAGE.index(cxr_sim.triage(st))))
    tok = text.train_tokenizer([r[1] for r in rows], vocab_size=300)
    r = text.encode(tok, [x[1] for x in rows], 48)
    n = text.encode(tok, [x[2] for x in rows], 48)
    p = text.encode(tok, ["PA chest radiograph."] * len(rows), 8, bos_eos=False)
    t = lambda a: torch.tensor(a)  # noqa: E731
    ds = torch.utils.data.TensorDataset(torch.tensor(np.stack([x[0] for x in rows]) / 4095.0, dtype=torch.float32)[:, None],
                                        t(p.ids), t(p.mask), t(r.ids), t(r.mask), t(n.ids), t(n.mask), t([x[3] for x in rows]))
    return tok, ds


def _fit(net, ds, tmp_path, **task_kw):
    from medops.engine import Trainer

    cfg = dataclasses.replace(TrainConfig(), lr=2e-3, batch_size=8, epochs=6, scheduler="val_loss", gamma=0.5,
                              monitor="val_loss", precision="fp32")
    task = VLFusionTask(net, cfg, **task_kw)
    return Trainer(task, cfg, tmp_path, progress=False, device=torch.device("cpu")).fit(ds, ds)


def test_the_multi_task_loss_falls_and_reports_its_parts(data, tmp_path):
    tok, ds = data
    torch.manual_seed(0)
    net = get_model("vl_fusion", vocab_size=tok.vocab_size, fusion="cross", **SMALL)
    hist = _fit(net, ds, tmp_path, lambdas=(1.0, 1.0, 1.0), margin=0.5)
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    assert hist[-1]["val_seq_loss"] < hist[0]["val_seq_loss"]
    assert {"val_token_accuracy", "val_triage_accuracy", "val_hard_negative_accuracy"} <= set(hist[-1])


def test_a_model_without_matching_features_trains_without_the_contrastive_term(data, tmp_path):
    tok, ds = data
    torch.manual_seed(0)
    hist = _fit(get_model("vl_lstm_attention", vocab_size=tok.vocab_size, **SMALL), ds, tmp_path)
    assert "val_hard_negative_accuracy" not in hist[-1] and np.isfinite(hist[-1]["val_loss"])


def test_contrastive_loss_is_eq2():
    d_pos, d_neg = torch.tensor([0.1, 0.3]), torch.tensor([0.2, 0.9])
    # y=1: D^2 ; y=0: max(0, m - D)^2 with m = 0.5
    assert float(contrastive(d_pos, d_neg, 0.5)) == pytest.approx((0.01 + 0.09 + 0.09 + 0.0) / 4)
