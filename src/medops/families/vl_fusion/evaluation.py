"""Test-set evaluation of a `vl_fusion` model: every task on the same test images.

* generation: a report per image (greedy or beam search), scored against the image's reference reports by
  the COCO caption metrics, and read back by the labeller against the true findings (clinical correctness);
* matching: the distance of every (image, report) pair of the test gallery -> recall@1/5 both ways, and each
  image's own report against its one-fact-changed copy (hard negatives);
* triage: probabilities of the 3 classes -> accuracy, macro-F1, AUC.

Returns corpus metrics and a per-image table (the paired tests of the ablation compare these columns).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medops.families.vl_fusion import metrics, text


@torch.no_grad()
def evaluate_vl(net, ds, tok, states: list[dict], *, beam: int = 1, max_len: int | None = None,
                batch_size: int = 16, device: str | torch.device = "cpu", progress: bool = True,
                meteor: bool | None = None) -> tuple[dict, pd.DataFrame]:
    """``ds``: a :class:`~medops.families.vl_fusion.data.VLDataset` of the test split (first reference report
    as the gallery's text); ``states``: each case's true findings (``findings.jsonl``) for clinical scores."""
    net = net.to(device).eval()
    n = len(ds)
    gen, probs, tokens = [], [], []
    can_match = getattr(net, "fusion", "") in ("cross", "concat", "early")
    img_tokens = []
    for s in tqdm(range(0, n, batch_size), desc="evaluate: generate", disable=not progress, leave=False):
        items = [ds[i] for i in range(s, min(n, s + batch_size))]
        img = torch.stack([it[0] for it in items]).to(device)
        p_ids = torch.stack([it[1] for it in items]).to(device)
        p_mask = torch.stack([it[2] for it in items]).to(device)
        out = net.generate(img, p_ids, p_mask, max_len=max_len, beam=beam)
        gen += [text.decode(tok, o) for o in out]
        tokens += [len(o) for o in out]
        tri, _ = net(img, p_ids, p_mask, torch.stack([it[3] for it in items]).to(device))
        probs.append(torch.softmax(tri.float(), 1).cpu())
        if can_match:
            img_tokens.append(net.encode_image(img))
    probs = torch.cat(probs).numpy()
    labels = ds.labels.numpy()
    refs = {i: r for i, r in enumerate(ds.reports)}
    corpus, per = metrics.caption_scores(refs, dict(enumerate(gen)), meteor=meteor)
    clin, clin_case = metrics.clinical_scores(gen, states)
    res = {"caption": corpus, "clinical": clin, "triage": metrics.triage_scores(probs, labels), "n_test": n,
           "beam": beam, "mean_generated_tokens": float(np.mean(tokens)) if tokens else 0.0}
    table = pd.DataFrame({"case_id": ds.case_ids, "generated": gen, "triage_true": labels,
                          "triage_pred": probs.argmax(1), "clinical_f1": clin_case, **per})
    if can_match:
        v = torch.cat(img_tokens)
        dist = np.zeros((n, n), np.float32)
        for i in tqdm(range(n), desc="evaluate: match gallery", disable=not progress, leave=False):
            # image i against every report of the gallery (its own is report i)
            vi = v[i:i + 1].expand(n, -1, -1)
            dist[i] = net.match_distance(vi, ds.ids[:, 0].to(device), ds.mask[:, 0].to(device)).cpu().numpy()
        d_neg = net.match_distance(v, ds.neg_ids.to(device), ds.neg_mask.to(device)).cpu().numpy()
        hn, hit = metrics.hard_negative_accuracy(np.diag(dist), d_neg)
        res["matching"] = {**metrics.recall_at_k(dist), "hard_negative_accuracy": hn}
        table["hard_negative_hit"] = hit
        table["own_report_rank"] = (dist < np.diag(dist)[:, None]).sum(1)
    return res, table
