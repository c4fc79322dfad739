"""Patient-level, seeded train/val/test splits."""

from __future__ import annotations

import numpy as np
import pandas as pd


def patient_split(patient_ids, fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Assign every patient to exactly one split.

    Patients are shuffled with ``seed`` and cut by ``fractions`` (normalised);
    every split with a positive fraction gets at least one patient when there
    are enough patients.
    """
    patients = np.array(sorted(set(patient_ids)))
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    names = list(fractions)
    frac = np.array([fractions[n] for n in names], dtype=float)
    frac = frac / frac.sum()
    counts = np.floor(frac * len(patients)).astype(int)
    for i in np.argsort(-frac):  # hand out the remainder, then guarantee non-empty splits
        if counts.sum() >= len(patients):
            break
        counts[i] += 1
    for i, f in enumerate(frac):
        if f > 0 and counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    out, start = {}, 0
    for name, c in zip(names, counts):
        for p in patients[start:start + c]:
            out[str(p)] = name
        start += c
    return out


def apply_split(manifest: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.DataFrame:
    mapping = patient_split(manifest["patient_id"], fractions, seed)
    return manifest.assign(split=manifest["patient_id"].map(mapping))


def with_extra_test(main: pd.DataFrame, extra: pd.DataFrame, fractions: dict[str, float], seed: int,
                    split=None) -> pd.DataFrame:
    """``main`` split by patient as usual, plus ``extra`` cases (new patients, same simulator) all in the test
    split: a test set sized for the claims without shrinking training (never seen in training or selection)."""
    main = split(main) if split is not None else apply_split(main, fractions, seed)
    if extra.empty:
        return main
    shared = set(main.patient_id) & set(extra.patient_id)
    if shared:
        raise ValueError(f"extra test patients also in the main set: {sorted(shared)[:3]}")
    return pd.concat([main, extra.assign(split="test")], ignore_index=True)


def patient_folds(patient_id: pd.Series, positive: pd.Series, k: int, seed: int) -> dict:
    """``k`` cross-validation folds by patient, stratified by whether the patient has a positive case:
    ``{patient_id: fold}`` (the same patients always land in the same fold for a given seed)."""
    pat = pd.Series(np.asarray(positive, bool), index=np.asarray(patient_id)).groupby(level=0).any().astype(int)
    rng = np.random.default_rng([seed, 5])
    fold = {}
    for _, g in pat.groupby(pat, sort=True):
        for j, p in enumerate(rng.permutation(sorted(g.index))):
            fold[p] = j % k
    return fold
