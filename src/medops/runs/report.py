"""`medops report <family>`: the family's paper-shaped ablation report, logged to the ablation's parent run."""

from __future__ import annotations

import pandas as pd

from medops import layout
from medops.families import get_family


def report(cfg, family: str) -> dict:
    from medops import tracking

    fam, fcfg = get_family(family, cfg), cfg.family(family)
    out = layout.ablation_report_dir(family)
    summary = fam.report(layout.cells_dir(family), fcfg.ablation, out, alpha=fcfg.promote.alpha, profile=cfg.profile)
    cells = pd.read_csv(out / "cells.csv")
    run_ids = [r for r in cells.run_id.dropna() if r]
    parent = tracking.parent_of(run_ids[0]) if run_ids else None
    if parent:
        tracking.log_artifacts_to(parent, out, "report")
    summary["parent_run_id"] = parent
    return summary
