"""vl_fusion data: simulated radiographs + reports preprocessed into shards, reports.parquet and a tokenizer
trained on the training split only; the dataset serves the task's batches; bad report files are refused
with the file, row, rule and fix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from medops.data import cxr_sim
from medops.errors import MedopsError
from medops.families.vl_fusion import data, text


@dataclass(frozen=True)
class _Img:
    image_size: int = 64
    equalize: str = "none"
    workers: int = 1


TEXT = SimpleNamespace(vocab_size=300, min_frequency=1, max_len=40)
SPLIT = SimpleNamespace(fractions={"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxr") / "raw"
    cxr_sim.generate(30, 64, 1, SPLIT, root, progress=False)
    return root


@pytest.fixture(scope="module")
def pre(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("cxr") / "pre"
    index, msg = data.preprocess_vl(raw, out, _Img(), TEXT, progress=False)
    return out, index, msg


def test_preprocess_writes_shards_reports_and_a_tokenizer_from_training_reports_only(pre, raw):
    out, index, msg = pre
    assert len(index) == 30 and {"train", "val", "test"} <= set(index.split)
    table = pd.read_parquet(out / "reports.parquet")
    assert len(table) == 30 and all(len(json.loads(r)) == 5 for r in table.reports)
    assert (table.hard_negative != "").all()
    stats = json.loads((out / "preprocess.json").read_text())["text"]
    assert stats["trained_on"] == "train split reports" and stats["train"]["reports"] == 5 * (index.split == "train").sum()
    assert "tokenizer of" in msg and "truncated" in msg
    # the vocabulary holds only what the training reports contain (plus specials and the alphabet)
    tok = text.load_tokenizer(out / "tokenizer.json")
    train_words = {w for r in table[table.split == "train"].reports for t in json.loads(r) for w in t.lower().split()}
    assert tok.vocab_size <= 300 and train_words


def test_the_dataset_serves_the_task_batch(pre):
    out, index, _ = pre
    tok = text.load_tokenizer(out / "tokenizer.json")
    ds = data.VLDataset(out, index, "train", tok, max_len=40, prompt="PA chest radiograph.", sample_reports=True)
    img, p_ids, p_mask, r_ids, r_mask, n_ids, n_mask, tri = ds[0]
    assert img.shape == (3, 64, 64) and r_ids.shape == (40,) and r_ids[0] == 1 and 2 in r_ids.tolist()
    assert not torch.equal(r_ids, n_ids) and tri.dtype == torch.int64
    torch.manual_seed(0)
    picks = {tuple(ds[0][3].tolist()) for _ in range(20)}
    assert len(picks) > 1                                   # training draws among the reference reports


def test_bad_report_files_are_refused_with_row_rule_and_fix(tmp_path, raw):
    good = pd.read_csv(raw / "reports.csv")
    p = tmp_path / "reports.csv"
    bad = good.copy()
    bad.loc[3, "report"] = "   "
    bad.to_csv(p, index=False)
    with pytest.raises(MedopsError, match=r"reports.csv:5.*empty report.*write the report"):
        data.read_reports(p)
    good.drop(columns=["report"]).to_csv(p, index=False)
    with pytest.raises(MedopsError, match=r"missing column.*report"):
        data.read_reports(p)
    p.write_bytes(b"case_id,report\ncxr00000,ok\ncxr00001,caf\xe9 au lait\n")
    with pytest.raises(MedopsError, match=r"reports.csv:3.*not valid UTF-8.*UTF-8"):
        data.read_reports(p)
    reps = data.read_reports(raw / "reports.csv")
    with pytest.raises(MedopsError, match="image\\(s\\) without a report"):
        data.check_pairs(reps[reps.case_id != "cxr00001"], ["cxr00000", "cxr00001"], raw / "reports.csv")
    with pytest.raises(MedopsError, match="report\\(s\\) without an image"):
        data.check_pairs(reps[reps.case_id.isin(["cxr00000", "cxr00002"])], ["cxr00000"], raw / "reports.csv")


def test_long_reports_are_truncated_and_counted(pre):
    out, index, _ = pre
    tok = text.load_tokenizer(out / "tokenizer.json")
    ds = data.VLDataset(out, index, "val", tok, max_len=12, prompt="PA chest radiograph.")
    assert len(ds.truncated) == len(ds)                     # every report is longer than 10 tokens


def test_evaluation_scores_every_task_on_the_same_test_images(pre, raw):
    from medops.families.vl_fusion.evaluation import evaluate_vl
    from medops.models import get_model

    out, index, _ = pre
    tok = text.load_tokenizer(out / "tokenizer.json")
    ds = data.VLDataset(out, index, "test", tok, max_len=40, prompt="PA chest radiograph.")
    states = {json.loads(line)["case_id"]: json.loads(line) for line in (raw / "findings.jsonl").read_text().splitlines()}
    torch.manual_seed(0)
    net = get_model("vl_fusion", vocab_size=tok.vocab_size, image_size=64, width=32, heads=4, max_len=40,
                    block_config=(1, 1), growth_rate=8, init_features=16, embed_dim=16,
                    text_config={"embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 1,
                                 "num_attention_heads": 4, "intermediate_size": 64})
    res, table = evaluate_vl(net, ds, tok, [states[c] for c in ds.case_ids], max_len=12, progress=False, meteor=False)
    n = len(ds)
    assert res["n_test"] == n and len(table) == n
    assert {"bleu4", "cider_d", "rouge_l"} <= set(res["caption"]) and "macro_f1" in res["clinical"]
    assert {"i2t_r1", "t2i_r5", "hard_negative_accuracy"} <= set(res["matching"])
    assert {"cider_d", "clinical_f1", "hard_negative_hit", "own_report_rank"} <= set(table.columns)
    assert table.own_report_rank.between(0, n - 1).all()
