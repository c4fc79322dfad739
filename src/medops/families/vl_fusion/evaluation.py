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
import torch.nn.functional as F
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
        g_ids, g_mask = ds.match_ids
        g_ids, g_mask = g_ids.to(device), g_mask.to(device)
        g_txt = net.encode_text(g_ids, g_mask) if hasattr(net, "encode_text") else None   # once, for every image
        dist = np.zeros((n, n), np.float32)
        for i in tqdm(range(n), desc="evaluate: match gallery", disable=not progress, leave=False):
            # image i against every report of the gallery (its own is report i)
            vi = v[i:i + 1].expand(n, -1, -1)
            dist[i] = net.match_distance(vi, g_ids, g_mask, g_txt).cpu().numpy()
        d_neg = net.match_distance(v, ds.neg_ids.to(device), ds.neg_mask.to(device)).cpu().numpy()
        hn, hit = metrics.hard_negative_accuracy(np.diag(dist), d_neg)
        res["matching"] = {**metrics.recall_at_k(dist), "hard_negative_accuracy": hn}
        table["hard_negative_hit"] = hit
        table["own_report_rank"] = (dist < np.diag(dist)[:, None]).sum(1)
    return res, table


def flat_metrics(res: dict) -> dict:
    """The nested result of :func:`evaluate_vl` as one level of named metrics (MLflow, status.json)."""
    m = dict(res["caption"])
    m["clinical_f1"] = res["clinical"]["macro_f1"]
    m.update({f"triage_{k}": v for k, v in res["triage"].items()})
    m.update(res.get("matching", {}))
    return m


def retrieval_baseline(train_ds, test_ds, states: list[dict], *, size: int = 32, meteor: bool | None = None):
    """Nearest-neighbour report retrieval, the classic captioning baseline: each test radiograph gets the first
    report (and the triage class) of the most similar training radiograph (cosine of downsampled pixels)."""
    def feats(imgs):
        x = F.adaptive_avg_pool2d(imgs.float()[:, :1], size).flatten(1)
        x = x - x.mean(1, keepdim=True)
        return F.normalize(x, dim=1)

    nn_idx = (feats(test_ds.images) @ feats(train_ds.images).T).argmax(1).numpy()
    gen = [train_ds.reports[j][0] for j in nn_idx]
    labels = test_ds.labels.numpy()
    probs = np.eye(3)[train_ds.labels.numpy()[nn_idx]]
    corpus, per = metrics.caption_scores(dict(enumerate(test_ds.reports)), dict(enumerate(gen)), meteor=meteor)
    clin, clin_case = metrics.clinical_scores(gen, states)
    res = {"caption": corpus, "clinical": clin, "triage": metrics.triage_scores(probs, labels)}
    table = pd.DataFrame({"case_id": test_ds.case_ids, "generated": gen, "clinical_f1": clin_case, **per})
    return res, table


@torch.no_grad()
def attention_maps(net, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray | None:
    """Where the report's words look in the image: the text-to-image cross-attention of the last layer,
    averaged over heads and words, as an (N, side, side) map; None for a model without cross-attention."""
    if getattr(net, "fusion", "") != "cross":
        return None
    net.eval()
    net.fuse(net.encode_image(images), ids, mask)
    w = net.last_attention.float()                                     # (N, words, image tokens)
    keep = mask.unsqueeze(-1).float()
    a = (w * keep).sum(1) / keep.sum(1).clamp_min(1)
    side = int(round(a.shape[1] ** 0.5))
    return a.reshape(-1, side, side).cpu().numpy()


def attention_figure(images, maps, titles: list[str], path, *, suptitle: str = "") -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 4.2), squeeze=False)
    for ax, img, m, t in zip(axes[0], images, maps, titles):
        img = np.asarray(img, float)
        ax.imshow(img, cmap="gray")
        import cv2

        up = cv2.resize(np.asarray(m, np.float32), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        up = (up - up.min()) / max(float(up.max() - up.min()), 1e-9)
        ax.imshow(up, cmap="jet", alpha=0.3, extent=(0, img.shape[1], img.shape[0], 0))
        ax.set_title("\n".join(textwrap.wrap(t, 40)[:6]), fontsize=6)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93) if suptitle else None)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def evaluate_main(net, train_ds, test_ds, tok, out, *, history_csv, ecfg, progress: bool = True) -> dict:
    """``medops evaluate``: every task on the test split, the retrieval baseline on the same images, loss
    curves, cross-attention maps, and generated reports beside their references (``examples.md``)."""
    import json
    from pathlib import Path

    from medops.evaluation.figures import loss_curves

    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    res, table = evaluate_vl(net, test_ds, tok, test_ds.states, beam=ecfg.beam, max_len=ecfg.max_len,
                             progress=progress)
    base, btable = retrieval_baseline(train_ds, test_ds, test_ds.states)
    table = table.merge(btable.add_prefix("baseline_").rename(columns={"baseline_case_id": "case_id"}), on="case_id")
    table.to_csv(out / "per_case.csv", index=False)
    metrics_ = {"model": flat_metrics(res), "baseline": flat_metrics(base), "n_test_cases": len(test_ds),
                "beam": ecfg.beam, "clinical_per_finding": res["clinical"], "baseline_name": "nearest-neighbour retrieval",
                "baseline_best": "nearest-neighbour report retrieval",
                "mean_generated_tokens": res["mean_generated_tokens"]}
    (out / "metrics.json").write_text(json.dumps(metrics_, indent=2, default=float))
    if Path(history_csv).exists():
        loss_curves(pd.read_csv(history_csv), out / "figures" / "loss_curves.png")
    k = min(ecfg.attention_figure_cases, len(test_ds))
    if k:
        idx = list(range(k))
        imgs = torch.stack([test_ds.images[i].float() for i in idx])
        g_ids, g_mask = test_ds.match_ids
        maps = attention_maps(net, imgs, g_ids[idx], g_mask[idx])
        if maps is not None:
            attention_figure([imgs[i, 0].numpy() for i in range(k)], maps,
                             [f"{test_ds.case_ids[i]}: {table.generated.iloc[i]}" for i in idx],
                             out / "figures" / "cross_attention.png",
                             suptitle="where the reference report's words look (text-to-image cross-attention); "
                                      "titles: generated reports")
    lines = ["# Generated reports beside their references (test split)", ""]
    for i in range(min(10, len(test_ds))):
        lines += [f"## {test_ds.case_ids[i]}", "", f"- generated: {table.generated.iloc[i]}",
                  f"- reference: {test_ds.reports[i][0]}", f"- retrieval baseline: {table.baseline_generated.iloc[i]}", ""]
    (out / "examples.md").write_text("\n".join(lines))
    return metrics_
