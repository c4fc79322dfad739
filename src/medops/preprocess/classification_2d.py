"""Preprocessing for classification datasets (paper 002 section 3.2), cached as shards.

Per case: every channel scaled to [0, 1] between robust percentiles, histogram equalisation
(scikit-image) computed over the foreground (Otsu threshold of the channel mean: the body, the
fundus disc, the head) with the background set to 0, resize to the profile's size (224 in the paper profile); grayscale images are
replicated to the three channels the backbones expect (counted and logged). The lesion mask,
when present, is resized alongside for scoring Grad-CAM. Augmentation (rotation, zoom,
horizontal flip) happens at training time on the training split only
(:class:`medops.data.dataset.ClassificationDataset`). Shards are named by the hash of the
case's files, the label, the parameters and ``PREPROCESS_VERSION``: unchanged cases are never
recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from skimage import exposure

from medops.data.io import file_sha256, resolve_inside
from medops.data.readers import case_stack, class_list, dataset_info, load_manifest
from medops.preprocess.shards import add_shard_digests, normalise, previous_shard_digests, run_jobs, shard_intact

PREPROCESS_VERSION = "cls-1"
log = logging.getLogger("medops.preprocess")


EQUALIZE = ("foreground", "global", "none")


def foreground(chans: list[np.ndarray]) -> np.ndarray:
    """Body / fundus / head: above the Otsu threshold of the channel mean (scikit-image)."""
    from skimage.filters import threshold_otsu

    m = np.mean(chans, axis=0)
    return m > threshold_otsu(m) if m.max() > m.min() else np.ones(m.shape, bool)


def read_stacks(files: list[Path], what: str = "image", min_size: int = 32) -> list[np.ndarray]:
    """Images to predict on as (C, H, W) float32 stacks, every file read and checked before any is used (so a
    bad file refuses the whole batch and nothing is half-written); names must be safe ids."""
    from medops.data.io import read_image
    from medops.errors import DataError
    from medops.layout import safe_id

    stacks = []
    for f in files:
        safe_id(f.name.split(".")[0], f"{what} name")
        arr = read_image(f, color=True).astype(np.float32)
        if min(arr.shape[:2]) < min_size:
            raise DataError(str(f), f"min_size: image is {arr.shape[1]}x{arr.shape[0]}",
                            f"use {what}s of at least {min_size}x{min_size} pixels")
        stacks.append(arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None])
    return stacks


def preprocess_image(stack: np.ndarray, mask: np.ndarray | None, cfg):
    """(C, H, W) stored values -> ((3, S, S) float32 in [0, 1], (S, S) uint8 mask or None, converted_gray).

    ``equalize``: ``foreground`` equalises the histogram of the foreground only and zeroes the
    background — global equalisation of a CT slice spreads the air's noise over the whole grey
    range, and Grad-CAM showed models reading that background instead of the organs;
    ``global`` is the plain paper recipe; ``none`` skips equalisation."""
    if cfg.equalize not in EQUALIZE:
        raise ValueError(f"params.yaml:preprocess_cls.equalize: unknown '{cfg.equalize}' (use one of {EQUALIZE})")
    s = cfg.image_size
    chans = [normalise(ch) for ch in stack]
    fg = foreground(chans) if cfg.equalize == "foreground" else None
    out = []
    for x in chans:
        if cfg.equalize == "global":
            x = exposure.equalize_hist(x, nbins=256).astype(np.float32)
        elif fg is not None:
            x = np.where(fg, exposure.equalize_hist(x, nbins=256, mask=fg), 0).astype(np.float32)
        out.append(cv2.resize(x, (s, s), interpolation=cv2.INTER_AREA))
    chans = out
    converted = len(chans) == 1
    if converted:
        chans = chans * 3
    m = None
    if mask is not None:
        m = (cv2.resize(mask.astype(np.float32), (s, s), interpolation=cv2.INTER_AREA) >= 0.5).astype(np.uint8)
    return np.stack(chans).astype(np.float32), m, converted


def _key(files: list[Path], label: str, cfg) -> str:
    h = hashlib.sha256()
    h.update(PREPROCESS_VERSION.encode())
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(label.encode())
    for f in files:
        h.update(file_sha256(f).encode())
    return h.hexdigest()[:32]


def _work(args):
    root, rows, shard, label_idx, cfg = args
    stack, mask = case_stack(root, rows)
    img, m, converted = preprocess_image(stack, mask, cfg)
    tmp = shard.with_suffix(".tmp.npz")
    np.savez(tmp, image=img.astype(np.float16), mask=m if m is not None else np.zeros(0, np.uint8),
             label=np.int64(label_idx), converted_gray=np.bool_(converted))
    os.replace(tmp, shard)
    return converted


def preprocess_classification(root: str | Path, out: str | Path, cfg, *,
                              split_fractions: dict | None = None, split_seed: int = 0,
                              progress: bool = True, labeler=None) -> pd.DataFrame:
    """``labeler``: labels for the images that have none (:func:`medops.data.readers.load_manifest`);
    how many were derived is written to ``preprocess.json``."""
    root, out = Path(root), Path(out)
    info = dataset_info(root)
    man = load_manifest(root, split_fractions, split_seed, labeler=labeler)
    classes = class_list(info, man)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    rows, todo = [], []
    recorded = previous_shard_digests(out)  # a cached shard is reused only if it is intact
    for case_id, g in man.groupby("case_id", sort=True):
        files = [resolve_inside(root, p) for p in sorted(g.path)]
        label = str(g.label.iloc[0])
        key = _key(files, label, cfg)
        shard = out / "shards" / f"{key}.npz"
        rows.append({"case_id": case_id, "patient_id": g.patient_id.iloc[0], "split": g.split.iloc[0],
                     "label": label, "label_idx": classes.index(label), "shard": f"shards/{key}.npz",
                     "has_mask": bool((g.modality == "mask").any())})
        if not shard_intact(shard, recorded.get(f"shards/{key}.npz")):
            todo.append((root, g, shard, classes.index(label), cfg))
    run_jobs(_work, todo, cfg.workers, progress, chunksize=4)
    index = pd.DataFrame(rows)
    index["converted_gray"] = [bool(np.load(out / s)["converted_gray"]) for s in index.shard]
    index = add_shard_digests(index, out)
    index.to_parquet(out / "index.parquet", index=False)
    n_gray = int(index.converted_gray.sum())
    if n_gray:
        log.warning("%d grayscale case(s) replicated to 3 channels for the RGB backbones", n_gray)
    stats = {"n_cases": int(len(index)), "computed": len(todo), "cached": int(len(index) - len(todo)),
             "image_size": cfg.image_size, "classes": classes,
             "class_counts": {c: int((index.label == c).sum()) for c in classes},
             "split_counts": {s: {c: int(((index.split == s) & (index.label == c)).sum()) for c in classes}
                              for s in ("train", "val", "test")},
             "converted_gray_to_rgb": n_gray,
             "labels_derived": int(man.drop_duplicates("case_id").get("label_derived", pd.Series(dtype=bool)).sum())}
    (out / "preprocess.json").write_text(json.dumps(stats, indent=2))
    return index
