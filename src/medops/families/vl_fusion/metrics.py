"""Metrics of the `vl_fusion` family.

* **Report generation** — the reference COCO caption metrics from ``pycocoevalcap``: BLEU-1…4, METEOR
  (Java), ROUGE-L and CIDEr-D, corpus-level and per image (per-image scores feed the paired tests). Texts
  are tokenised by the PTB tokenizer (Java) as in the COCO evaluation server; without ``java`` the same
  lower-casing, punctuation-stripping split is done in Python and METEOR is left out (reported, not zero).
* **Matching** — recall@K in both directions over a gallery (report i belongs to image i), and accuracy on
  hard negatives (the true report closer than the same report with one fact changed).
* **Triage** — accuracy, macro-F1, one-vs-rest macro AUC (torchmetrics).
* **Clinical correctness** — the rule-based labeller (``cxr_sim.read_findings``) reads the findings out of a
  generated report; per finding, precision / recall / F1 of "present" against the true state, and the
  share of present findings whose attributes (side, size, lobe...) are also right.
"""

from __future__ import annotations

import re
import shutil

import numpy as np

from medops.data.cxr_sim import FINDINGS, read_findings

CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider_d")


def _py_tokenize(texts: dict) -> dict:
    """PTB-like fallback: lower case, punctuation removed, whitespace split (what PTBTokenizer keeps)."""
    return {k: [" ".join(re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", t.lower())) for t in v] for k, v in texts.items()}


def java_available() -> bool:
    return shutil.which("java") is not None


def caption_scores(refs: dict, hyps: dict, *, meteor: bool | None = None,
                   ptb: bool | None = None) -> tuple[dict, dict]:
    """``refs``: id -> list of reference reports, ``hyps``: id -> generated report. Returns (corpus scores,
    per-image scores: metric -> array in the order of ``sorted(hyps)``).

    ``ptb`` (default: when ``java`` is installed) tokenises with the PTB tokenizer, else in Python; ``meteor``
    (same default) adds METEOR. The tokenizer does not follow ``meteor``: scores computed with and without
    METEOR share their BLEU / ROUGE-L / CIDEr-D. METEOR's first call costs ~16 s (its JVM loads the paraphrase
    tables), the scoring itself ~0.2 s for a test set."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = sorted(hyps)
    missing = [i for i in ids if not refs.get(i)]
    if missing:
        raise ValueError(f"no reference report for {missing[:5]}")
    java = java_available()
    ptb = java if ptb is None else ptb
    meteor = java if meteor is None else meteor
    gts = {i: list(refs[i]) for i in ids}
    res = {i: [hyps[i] or ""] for i in ids}
    if ptb:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        gts = tok.tokenize({i: [{"caption": c} for c in v] for i, v in gts.items()})
        res = tok.tokenize({i: [{"caption": c} for c in v] for i, v in res.items()})
    else:
        gts, res = _py_tokenize(gts), _py_tokenize(res)
    corpus, per = {}, {}
    b, b_img = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        corpus[f"bleu{n + 1}"], per[f"bleu{n + 1}"] = float(b[n]), np.asarray(b_img[n], float)
    r, r_img = Rouge().compute_score(gts, res)
    corpus["rouge_l"], per["rouge_l"] = float(r), np.asarray(r_img, float)
    c, c_img = Cider().compute_score(gts, res)
    corpus["cider_d"], per["cider_d"] = float(c), np.asarray(c_img, float)
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        m = Meteor()          # a java subprocess, closed when the scorer is collected
        s, s_img = m.compute_score(gts, res)
        del m
        corpus["meteor"], per["meteor"] = float(s), np.asarray(s_img, float)
    return corpus, per


def recall_at_k(dist: np.ndarray, ks=(1, 5)) -> dict:
    """``dist[i, j]``: distance of image i and report j; report i is image i's. Recall@K image->report and
    report->image."""
    d = np.asarray(dist, float)
    n = d.shape[0]
    rank_i2t = (d < d[np.arange(n), np.arange(n)][:, None]).sum(1)     # reports closer than the true one
    rank_t2i = (d < d[np.arange(n), np.arange(n)][None, :]).sum(0)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((rank_i2t < k).mean())
        out[f"t2i_r{k}"] = float((rank_t2i < k).mean())
    return out


def hard_negative_accuracy(d_true: np.ndarray, d_neg: np.ndarray) -> tuple[float, np.ndarray]:
    """Share of pairs where the true report is closer than its one-fact-changed copy (and per pair 0/1)."""
    hit = (np.asarray(d_true) < np.asarray(d_neg)).astype(float)
    return float(hit.mean()), hit


def triage_scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_auroc, multiclass_f1_score

    p, y = torch.as_tensor(np.asarray(probs), dtype=torch.float32), torch.as_tensor(np.asarray(labels), dtype=torch.long)
    c = p.shape[1]
    out = {"accuracy": float(multiclass_accuracy(p, y, num_classes=c, average="micro")),
           "macro_f1": float(multiclass_f1_score(p, y, num_classes=c, average="macro"))}
    present = np.unique(labels)
    out["auc"] = float(multiclass_auroc(p, y, num_classes=c, average="macro")) if len(present) == c else float("nan")
    return out


def _same(a: dict | None, b: dict | None) -> bool:
    if not a or not b:
        return False
    if any(v is None for v in a.values()):             # an attribute the report did not state is not right
        return False
    if "ctr" in a:                                     # cardiomegaly: the stated ratio within 0.03
        return abs(a["ctr"] - b["ctr"]) <= 0.03
    if "diameter_mm" in a:
        return a["side"] == b["side"] and a["zone"] == b["zone"] and abs(a["diameter_mm"] - b["diameter_mm"]) <= 3
    return a == b


def clinical_scores(generated: list[str], states: list[dict]) -> tuple[dict, np.ndarray]:
    """Per finding precision / recall / F1 of "present" read back from the generated reports against the
    true states, their macro mean, the share of true positives with every attribute right, and per report
    the F1 over its findings (for paired tests)."""
    read = [read_findings(g or "") for g in generated]
    out, per_case = {}, []
    f1s = []
    for f in FINDINGS:
        pred = np.array([r[f] is not None for r in read])
        true = np.array([s[f] is not None for s in states])
        tp, fp, fn = int((pred & true).sum()), int((pred & ~true).sum()), int((~pred & true).sum())
        prec = tp / (tp + fp) if tp + fp else float("nan")
        rec = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        exact = sum(_same(r[f], s[f]) for r, s in zip(read, states) if r[f] and s[f])
        out[f] = {"precision": prec, "recall": rec, "f1": f1, "n_true": int(true.sum()),
                  "attributes_right": exact / tp if tp else float("nan")}
        if tp + fp + fn:
            f1s.append(f1)
    out["macro_f1"] = float(np.mean(f1s)) if f1s else float("nan")
    for r, s in zip(read, states):
        tp = sum(bool(r[f]) and bool(s[f]) for f in FINDINGS)
        fp = sum(bool(r[f]) and not s[f] for f in FINDINGS)
        fn = sum(not r[f] and bool(s[f]) for f in FINDINGS)
        per_case.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return out, np.asarray(per_case, float)
