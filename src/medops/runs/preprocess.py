"""`medops preprocess`: the paper preprocessing of the dataset's family (validated data only)."""

from __future__ import annotations

import json

from medops import layout
from medops.families import family_of_dataset
from medops.locks import exclusive
from medops.validation import require_passed


def preprocess(cfg, dataset: str):
    """Shards + index under data/preprocessed/<dataset>; returns ``(index, one-line summary)``. Every raw file
    must still have the content that passed validation; the result records which validated content it
    was made from, so training and evaluation can refuse stale shards."""
    root, out = layout.data_dir(dataset), layout.preprocessed_dir(dataset)
    summary = require_passed(root, layout.validation_dir(dataset))
    with exclusive(out, f"preprocessed data of {dataset}"):
        index, msg = family_of_dataset(cfg, dataset).preprocess(cfg, root, out)
        stats_file = out / "preprocess.json"
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        stats["validated_content_sha256"] = summary["content_sha256"]
        tmp = stats_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(stats, indent=2))
        tmp.replace(stats_file)
    return index, msg
