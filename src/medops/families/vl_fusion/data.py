"""`vl_fusion` data: radiographs with their reports.

Layout (simulated by ``cxr_sim.generate`` or your own): ``images/<case>.png`` (or DICOM) listed in
``manifest.parquet`` / ``labels.csv`` with the triage class as ``label``, and ``reports.csv`` with columns
``case_id, report`` (several rows per case: several reference reports; optional ``report_idx``).
``hard_negatives.csv`` (``case_id, report``) is optional: without it, matching is scored on the gallery only.

:func:`read_reports` is the gate for the text — every refusal names the file, the row, the rule and the
fix. :func:`preprocess_vl` reuses the shared 2-D image preprocessing (shards by content) and adds the text:
``reports.parquet`` (the cases' reports and hard negatives, with their split) and ``tokenizer.json``, a
WordPiece vocabulary trained on the **training split's reports only**. :class:`VLDataset` serves the
8-tuple batches of :mod:`medops.families.vl_fusion.task`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medops.errors import MedopsError

log = logging.getLogger("medops.vl_fusion")
REQUIRED = ("case_id", "report")


def read_reports(path: Path, *, what: str = "reports.csv") -> pd.DataFrame:
    """A report CSV, strictly: UTF-8, the required columns, no empty report."""
    path = Path(path)
    if not path.exists():
        raise MedopsError(str(path), f"{what} is missing", "add a CSV with columns case_id, report (one row per report)")
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise MedopsError(f"{path}:{line}", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                          "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    df = pd.read_csv(path, dtype={"case_id": str}, keep_default_na=False, encoding="utf-8")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise MedopsError(str(path), f"missing column(s) {missing} (has {list(df.columns)})",
                          "the header must name case_id and report")
    empty = df.index[df.report.astype(str).str.strip() == ""].tolist()
    if empty:
        raise MedopsError(f"{path}:{empty[0] + 2}", f"empty report for case {df.case_id.iloc[empty[0]]!r} "
                          f"({len(empty)} empty in all)", "write the report text or drop the row")
    return df


def ordered_reports(reps: pd.DataFrame) -> pd.DataFrame:
    """Each case's reports in their order: ``report_idx`` when the file gives it, else the file's order."""
    if "report_idx" not in reps:
        reps = reps.assign(report_idx=reps.groupby("case_id").cumcount())
    return reps.sort_values(["case_id", "report_idx"], kind="stable")


def report_labeler(root: Path, reps: pd.DataFrame | None = None):
    """Triage labels for images that have none: the rule-based labeller reads the findings of each case's
    first report and the triage rule turns them into normal / non_urgent / urgent (as good as the labeller
    reads your reports' wording; the number derived is in preprocess.json as ``labels_derived``). ``reps``:
    the reports when already read (else ``root/reports.csv`` is read when a label is needed)."""
    path = Path(root) / "reports.csv"

    def label(man: pd.DataFrame) -> list[str]:
        from medops.data.cxr_sim import read_findings, triage

        ordered = ordered_reports(read_reports(path) if reps is None else reps)
        first = ordered.groupby(ordered.case_id.astype(str), sort=False).report.first()
        ids = man.case_id.astype(str)
        missing = sorted(set(ids) - set(first.index))
        if missing:
            raise MedopsError(str(path), f"{len(missing)} image(s) with neither a triage label nor a report, e.g. "
                              f"case_id {missing[:3]}", "add their reports (the label is read from a case's first "
                              "report), or give their label in labels.csv")
        return [triage(read_findings(first[c])) for c in ids]

    return label


def build_manifest(root: Path, split_fractions: dict | None = None, split_seed: int = 0) -> pd.DataFrame:
    """A dataset of your own: ``labels.csv`` (path, optional label) or just the images, with ``reports.csv``;
    missing triage labels are read from the reports (:func:`report_labeler`)."""
    from medops.data.readers import load_manifest

    return load_manifest(root, split_fractions, split_seed, labeler=report_labeler(root))


def check_pairs(reports: pd.DataFrame, case_ids, path: Path) -> None:
    """Every image has a report and every report an image."""
    cases, have = set(map(str, case_ids)), set(reports.case_id.astype(str))
    if cases - have:
        ex = sorted(cases - have)
        raise MedopsError(str(path), f"{len(ex)} image(s) without a report, e.g. {ex[:3]}",
                          "add their reports or remove the images from the manifest")
    if have - cases:
        ex = sorted(have - cases)
        raise MedopsError(str(path), f"{len(ex)} report(s) without an image, e.g. case_id {ex[:3]}",
                          "fix the case_id or add the image")


def preprocess_vl(root: Path, out: Path, image_cfg, text_cfg, *, split_fractions=None, split_seed: int = 0,
                  progress: bool = True) -> tuple[pd.DataFrame, str]:
    """Images -> shards (shared classification preprocessing, label = triage class); reports -> reports.parquet;
    tokenizer.json trained on the training split's reports. Returns (index, summary line)."""
    from medops.families.vl_fusion import text
    from medops.preprocess.classification_2d import preprocess_classification

    root, out = Path(root), Path(out)
    reps = ordered_reports(read_reports(root / "reports.csv"))
    index = preprocess_classification(root, out, image_cfg, split_fractions=split_fractions, split_seed=split_seed,
                                      progress=progress, labeler=report_labeler(root, reps))
    index = triage_order(index, out)
    check_pairs(reps, index.case_id, root / "reports.csv")
    neg = read_reports(root / "hard_negatives.csv", what="hard_negatives.csv") \
        if (root / "hard_negatives.csv").exists() else pd.DataFrame(columns=list(REQUIRED))
    split = dict(zip(index.case_id.astype(str), index.split))
    table = pd.DataFrame({"case_id": sorted(split), "split": [split[c] for c in sorted(split)]})
    table["reports"] = [json.dumps(g.report.tolist()) for _, g in
                        reps.groupby("case_id", sort=True)]
    negs = dict(zip(neg.case_id.astype(str), neg.report))
    table["hard_negative"] = [negs.get(c, "") for c in table.case_id]
    table["findings"] = [json.dumps(s) for s in true_findings(root, table)]
    reps["split"] = reps.case_id.astype(str).map(split)
    train_texts = reps.report[reps.split == "train"].tolist()
    tok = text.train_tokenizer(train_texts, text_cfg.vocab_size, text_cfg.min_frequency)
    text.save_tokenizer(tok, out / "tokenizer.json")
    table.to_parquet(out / "reports.parquet", index=False)
    stats = json.loads((out / "preprocess.json").read_text())
    counts = {}
    for s in ("train", "val", "test"):
        texts = reps.report[reps.split == s].tolist()
        enc = text.encode(tok, texts, text_cfg.max_len) if texts else None
        counts[s] = {"reports": len(texts), "truncated": len(enc.truncated) if enc else 0,
                     "unknown_tokens": enc.unknown if enc else 0}
        if enc and enc.truncated:
            log.warning("%s: %d report(s) longer than text.max_len=%d tokens are truncated", s, len(enc.truncated),
                        text_cfg.max_len)
    stats["text"] = {"vocab_size": tok.vocab_size, "trained_on": "train split reports", "max_len": text_cfg.max_len,
                     **counts, "hard_negatives": int((table.hard_negative != "").sum())}
    (out / "preprocess.json").write_text(json.dumps(stats, indent=2))
    msg = (f"preprocessed {len(index)} radiographs ({stats['computed']} computed, {stats['cached']} from cache), "
           f"{len(reps)} reports; tokenizer of {tok.vocab_size} tokens from {len(train_texts)} training reports; "
           f"{sum(c['truncated'] for c in counts.values())} report(s) truncated at {text_cfg.max_len} tokens")
    return index, msg


def check_triage_labels(labels, where: str) -> None:
    """Every label is a triage class (the head's 3 classes)."""
    from medops.data.cxr_sim import TRIAGE

    bad = sorted(set(pd.Series(labels).astype(str)) - set(TRIAGE))
    if bad:
        raise MedopsError(where, f"triage label(s) {bad} unknown", f"use {list(TRIAGE)} (urgent: pneumothorax "
                          "or a large effusion; non_urgent: any other finding; normal: none)")


def triage_order(index: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Class indices in the triage head's order (normal, non-urgent, urgent) whatever order the dataset lists
    its labels in (a labels.csv of your own: sorted names)."""
    from medops.data.cxr_sim import TRIAGE

    check_triage_labels(index.label, "labels")
    index = index.assign(label_idx=index.label.astype(str).map({c: i for i, c in enumerate(TRIAGE)}).astype(int))
    index.to_parquet(Path(out) / "index.parquet", index=False)
    stats = json.loads((Path(out) / "preprocess.json").read_text())
    stats["classes"] = list(TRIAGE)
    (Path(out) / "preprocess.json").write_text(json.dumps(stats, indent=2))
    return index


def true_findings(root: Path, table: pd.DataFrame) -> list[dict]:
    """Each case's true findings for the clinical scores: the simulator's hidden state (``findings.jsonl``)
    when there is one, else what the labeller reads from the case's first reference report."""
    from medops.data.cxr_sim import FINDINGS, read_findings

    states = {}
    if (Path(root) / "findings.jsonl").exists():
        for line in (Path(root) / "findings.jsonl").read_text().splitlines():
            s = json.loads(line)
            states[str(s["case_id"])] = {f: s.get(f) for f in FINDINGS}
    return [states.get(c) or read_findings(json.loads(r)[0]) for c, r in zip(table.case_id, table.reports)]


class VLDataset(torch.utils.data.Dataset):
    """One split's ``(image, prompt_ids, prompt_mask, report_ids, report_mask, negative_ids, negative_mask,
    triage)`` — with ``enc_tok`` (a pretrained text encoder's own tokenizer) the prompt and negatives are in
    its vocabulary and each item ends with the report's ids for the encoder ``(…, enc_ids, enc_mask)``.
    Training draws one of the case's reference reports per item (from torch's seeded generator, so a resumed
    run draws the same); validation and test use the first. A case without a hard negative gets
    the next case's report as its negative."""

    def __init__(self, pre_dir: Path, index: pd.DataFrame, split: str | None, tok, *, max_len: int, prompt: str,
                 prompt_len: int = 8, sample_reports: bool = False, enc_tok=None):
        from medops.data.dataset import load_split
        from medops.families.vl_fusion import text

        rows, self.images, _ = load_split(pre_dir, index, split)
        self.pre_dir = Path(pre_dir)
        self.case_ids = rows.case_id.astype(str).tolist()
        reps = pd.read_parquet(Path(pre_dir) / "reports.parquet").set_index("case_id")
        self.reports = [json.loads(reps.loc[c, "reports"]) for c in self.case_ids]
        self.states = [json.loads(reps.loc[c, "findings"]) if "findings" in reps else None for c in self.case_ids]
        self.labels = torch.tensor(rows.label_idx.to_numpy(np.int64))
        self.sample = sample_reports
        self.k = max(len(r) for r in self.reports) if self.reports else 1
        def reports_as(encode):       # every case's k reports: (N, k, L) ids and masks, and the encodings
            e = [encode([r[j % len(r)] for r in self.reports]) for j in range(self.k)]
            return torch.tensor(np.stack([x.ids for x in e], 1)), torch.tensor(np.stack([x.mask for x in e], 1)), e

        self.ids, self.mask, enc = reports_as(lambda t: text.encode(tok, t, max_len))
        self.truncated = sorted({i for e in enc for i in e.truncated})
        negs = [reps.loc[c, "hard_negative"] or self.reports[(i + 1) % len(self.reports)][0]
                for i, c in enumerate(self.case_ids)]
        self.enc = enc_tok is not None
        if self.enc:     # a pretrained text encoder reads its own vocabulary: prompt, negatives and the reports
            self.enc_ids, self.enc_mask, _ = reports_as(lambda t: text.encode_for_encoder(enc_tok, t, max_len))
            n, p = text.encode_for_encoder(enc_tok, negs, max_len), text.encode_for_encoder(enc_tok, [prompt], prompt_len)
        else:
            n, p = text.encode(tok, negs, max_len), text.encode(tok, [prompt], prompt_len, bos_eos=False)
        self.neg_ids, self.neg_mask = torch.tensor(n.ids), torch.tensor(n.mask)
        self.prompt_ids, self.prompt_mask = torch.tensor(p.ids[0]), torch.tensor(p.mask[0])
        # the split's longest text sets the width; the negatives share it with the text encoder's reports
        if self.enc:
            self.ids, self.mask = text.trim_padding(self.ids, self.mask)
            self.enc_ids, self.enc_mask, self.neg_ids, self.neg_mask = text.trim_padding(
                self.enc_ids, self.enc_mask, self.neg_ids, self.neg_mask)
        else:
            self.ids, self.mask, self.neg_ids, self.neg_mask = text.trim_padding(
                self.ids, self.mask, self.neg_ids, self.neg_mask)

    @property
    def match_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each case's first report as the text encoder reads it (the gallery of the matching task)."""
        return (self.enc_ids[:, 0], self.enc_mask[:, 0]) if self.enc else (self.ids[:, 0], self.mask[:, 0])

    def __len__(self):
        return len(self.case_ids)

    def __getitem__(self, i):
        j = int(torch.randint(self.k, ())) if self.sample else 0
        item = (self.images[i].float(), self.prompt_ids, self.prompt_mask, self.ids[i, j], self.mask[i, j],
                self.neg_ids[i], self.neg_mask[i], self.labels[i])
        return item + (self.enc_ids[i, j], self.enc_mask[i, j]) if self.enc else item
