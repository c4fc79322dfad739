"""vl_fusion text stack and metrics: the tokenizer round-trips what the labeller reads, counts truncation
and unknown words; caption metrics are the reference COCO ones (BLEU cross-checked against torchmetrics);
retrieval, hard-negative, triage and clinical scores behave as a reader expects."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medops.data import cxr_sim
from medops.families.vl_fusion import metrics, text


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(3)
    states = [cxr_sim.draw_state(rng) for _ in range(60)]
    reps = [cxr_sim.reports(s, rng, k=5) for s in states]
    return states, reps


@pytest.fixture(scope="module")
def tok(corpus):
    _, reps = corpus
    return text.train_tokenizer([r for rs in reps[:40] for r in rs], vocab_size=400)      # training split only


def test_the_labeller_reads_the_same_findings_after_tokenising_and_decoding(tok, corpus):
    states, reps = corpus
    for s, rs in zip(states[40:], reps[40:]):               # held-out reports
        for r in rs:
            enc = text.encode(tok, [r], max_len=256)
            back = text.decode(tok, enc.ids[0])
            assert cxr_sim.read_findings(back) == cxr_sim.read_findings(r) == {f: s[f] for f in cxr_sim.FINDINGS}


def test_truncation_and_unknown_words_are_counted(tok, corpus):
    _, reps = corpus
    enc = text.encode(tok, [reps[0][0], "short.", "the € sign ☃"], max_len=12)
    assert enc.truncated == [0] and all(len(r) == 12 for r in enc.ids)
    assert enc.ids[1][0] == 1 and 2 in enc.ids[1] and enc.mask[1].count(1) < 12      # [BOS] ... [EOS] [PAD]...
    assert enc.unknown >= 2
    with pytest.raises(Exception, match="max_len"):
        text.encode(tok, ["x"], max_len=2)


def test_the_tokenizer_is_saved_as_json_and_reloads_identically(tok, tmp_path, corpus):
    _, reps = corpus
    p = tmp_path / "tokenizer.json"
    text.save_tokenizer(tok, p)
    assert json.loads(p.read_text())["model"]["type"] == "WordPiece"
    again = text.load_tokenizer(p)
    assert text.encode(again, reps[1], 64).ids == text.encode(tok, reps[1], 64).ids
    with pytest.raises(Exception, match="no tokenizer file"):
        text.load_tokenizer(tmp_path / "missing.json")


def test_caption_metrics_rank_a_true_report_above_a_wrong_one(corpus):
    states, reps = corpus
    refs = {i: reps[i][1:] for i in range(20)}
    right = {i: reps[i][0] for i in range(20)}                # another phrasing of the same state
    wrong = {i: reps[(i + 7) % 20][0] for i in range(20)}     # another patient's report
    c_right, per_right = metrics.caption_scores(refs, right)
    c_wrong, _ = metrics.caption_scores(refs, wrong)
    expected = set(metrics.CAPTION_METRICS) - (set() if metrics.java_available() else {"meteor"})
    assert set(c_right) == expected and len(per_right["cider_d"]) == 20
    for m in expected:
        assert c_right[m] > c_wrong[m], m
    # without METEOR (the ablation's non-Table-1 cells) the other scores are the same: one tokenizer for both
    no_meteor, _ = metrics.caption_scores(refs, right, meteor=False)
    assert "meteor" not in no_meteor and no_meteor == {m: v for m, v in c_right.items() if m != "meteor"}
    assert 0 < c_right["bleu4"] <= 1 and c_right["cider_d"] > 1.0
    same, _ = metrics.caption_scores({0: [reps[0][0]]}, {0: reps[0][0]})
    assert same["bleu1"] == pytest.approx(1.0, abs=1e-6)


def test_bleu_agrees_with_an_independent_implementation(corpus):
    """pycocoevalcap's corpus BLEU-1..4 against torchmetrics' BLEUScore on the same tokens."""
    from torchmetrics.text import BLEUScore

    _, reps = corpus
    refs = {i: reps[i][1:] for i in range(30)}
    hyps = {i: reps[(i * 3) % 30][0] for i in range(30)}
    ours, _ = metrics.caption_scores(refs, hyps, meteor=False, ptb=False)   # python tokenisation on both sides
    toks = metrics._py_tokenize
    h = toks({i: [hyps[i]] for i in hyps})
    r = toks(refs)
    for n in (1, 2, 3, 4):
        tm = float(BLEUScore(n_gram=n)([h[i][0] for i in sorted(h)], [r[i] for i in sorted(h)]))
        assert ours[f"bleu{n}"] == pytest.approx(tm, abs=2e-3), n


def test_recall_at_k_and_hard_negatives():
    d = np.array([[0.1, 0.5, 0.9], [0.2, 0.3, 0.1], [0.4, 0.6, 0.2]])
    r = metrics.recall_at_k(d, ks=(1, 2, 3))
    # image 1's own report (0.3) ranks third behind reports 2 (0.1) and 0 (0.2)
    assert (r["i2t_r1"], r["i2t_r2"], r["i2t_r3"]) == pytest.approx((2 / 3, 2 / 3, 1.0))
    # report 2's own image (0.2) ranks second behind image 1 (0.1)
    assert (r["t2i_r1"], r["t2i_r2"]) == pytest.approx((2 / 3, 1.0))
    acc, hit = metrics.hard_negative_accuracy(np.array([0.1, 0.5]), np.array([0.2, 0.4]))
    assert acc == 0.5 and hit.tolist() == [1.0, 0.0]


def test_clinical_scores_are_perfect_for_reference_reports_and_catch_a_missed_finding(corpus):
    states, reps = corpus
    scores, per = metrics.clinical_scores([r[0] for r in reps], states)
    assert scores["macro_f1"] == 1.0 and (per == 1.0).all()
    assert all(scores[f]["attributes_right"] in (1.0,) or np.isnan(scores[f]["attributes_right"]) for f in cxr_sim.FINDINGS)
    normal = "FINDINGS: The lungs are clear. IMPRESSION: No acute cardiopulmonary abnormality."
    s2, per2 = metrics.clinical_scores([normal] * len(states), states)
    sick = [i for i, s in enumerate(states) if any(s[f] for f in cxr_sim.FINDINGS)]
    assert sick and all(per2[i] == 0.0 for i in sick)
    assert all(s2[f]["recall"] == 0.0 for f in cxr_sim.FINDINGS if s2[f]["n_true"])


def test_triage_scores():
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]])
    y = np.array([0, 1, 2, 2])
    s = metrics.triage_scores(p, y)
    assert s["accuracy"] == 0.75 and 0 < s["macro_f1"] < 1 and 0.5 < s["auc"] <= 1
