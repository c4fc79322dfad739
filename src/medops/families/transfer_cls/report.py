"""`medops report transfer_cls`: paper 002 Table 1 shaped tables (mean ± 95 % CI
over seeds, the paper's numbers beside ours), Grad-CAM localisation per backbone, and each claim
of the paper tested by a one-sided paired bootstrap of test AUC (probabilities averaged over seeds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medops.config import AblationConfig
from medops.experiments import claims as verdicts
from medops.experiments.ablation import (
    bar_chart, cell_for, convergence_note, curves_figure, finish_report, fmt, start_report,
)
from medops.experiments.ablation import factor_tables as shared_factor_tables
from medops.families.transfer_cls.references import CLAIMS_002, PAPER_002, TABLE_TITLES_002

METRICS = ("accuracy", "precision", "recall", "f1", "auc", "energy_in_mask", "pointing_hit", "mask_fraction")
PAPER_METRICS = ("accuracy", "precision", "recall", "f1", "auc")


def per_case(cells_root: Path, cells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """cell -> per-case label and positive-class probability averaged over the cell's finished seeds."""
    out = {}
    for cell, g in cells[cells.status == "finished"].groupby("cell"):
        frames = [pd.read_csv(cells_root / cell / f"seed{s}" / "per_case.csv").set_index("case_id") for s in g.seed]
        pos = [c for c in frames[0].columns if c.startswith("prob_")][-1]
        out[cell] = pd.DataFrame({"label_idx": frames[0].label_idx,
                                  "prob": pd.concat([f[pos] for f in frames], axis=1).mean(axis=1)})
    return out


def factor_tables(abl: AblationConfig, cells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return shared_factor_tables(abl, cells, METRICS, PAPER_002, PAPER_METRICS)


def claims(abl: AblationConfig, cells: pd.DataFrame, cases: dict, alpha: float) -> pd.DataFrame:
    """Each claim of paper 002 judged by the shared rules (experiments.claims): paired one-sided bootstrap of
    test AUC, the paper's AUC difference (Table 1) as the effect to detect."""
    rows = []
    for claim, factor, better, worse in CLAIMS_002:
        if factor not in abl.factors:
            continue
        ca, cb = cell_for(abl, factor, better), cell_for(abl, factor, worse)
        paper = PAPER_002.get(factor, {})
        effect = (paper[better][4] - paper[worse][4]) / 100 if better in paper and worse in paper else float("nan")
        rows.append(verdicts.judge_auc_claim({"claim": claim, "better": better, "worse": worse}, cases, ca, cb,
                                             cells=cells, paper_effect=effect, alpha=alpha))
    return pd.DataFrame(rows)


def _md_table(t: pd.DataFrame) -> str:
    lines = ["| level | cell | seeds ok | epochs run | converged | accuracy % | precision % | recall % | F1 % | AUC-ROC % | Grad-CAM energy in lesion % "
             "(chance) | pointing game % | paper acc / prec / rec / F1 / AUC % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in t.itertuples():
        paper = " / ".join("—" if getattr(r, f"paper_{m}") != getattr(r, f"paper_{m}")
                           else f"{100 * getattr(r, f'paper_{m}'):.1f}" for m in PAPER_METRICS)
        cells = [fmt(getattr(r, f"{m}_mean"), getattr(r, f"{m}_ci95")) for m in PAPER_METRICS]
        loc = f"{fmt(r.energy_in_mask_mean, r.energy_in_mask_ci95)} ({fmt(r.mask_fraction_mean, float('nan'))})"
        lines.append(f"| {r.level} | {r.cell} | {r.seeds_ok} | {r.epochs} | {r.converged} | " + " | ".join(cells)
                     + f" | {loc} | {fmt(r.pointing_hit_mean, r.pointing_hit_ci95)} | {paper} |")
    return "\n".join(lines)


def build_report(cells_root: Path, abl: AblationConfig, out: Path, *, alpha: float = 0.05, profile: str = "") -> dict:
    cells = start_report(cells_root, abl, out, METRICS)
    tables = factor_tables(abl, cells)
    cl = claims(abl, cells, per_case(cells_root, cells), alpha)
    cl.to_csv(out / "claims.csv", index=False)
    base = {k: v for k, v in abl.baseline.items()}
    md = [f"# Ablation report ({profile} profile, {len(abl.seeds)} seeds, at most {abl.epochs} epochs per cell)", "",
          f"Baseline: {', '.join(f'{k}={v}' for k, v in base.items())}. Each table varies one factor. Test-split "
          "metrics of the disease (minority) class, mean ± 95 % t-interval over seeds; the paper's Table 1 number "
          "beside ours. Grad-CAM scores are over disease cases with a lesion mask; the chance level of the energy "
          "share is the lesion's area share (in brackets). Simulated data: levels are not comparable with the "
          "paper's, only orderings.", ""]
    for factor, t in tables.items():
        t.to_csv(out / f"table_{factor}.csv", index=False)
        title = TABLE_TITLES_002.get(factor, factor)
        bar_chart(t, title, out / "figures" / f"{factor}.png", ("auc", "f1"), "test score")
        md += [f"## {title}", "", _md_table(t), "", f"![{factor}](figures/{factor}.png)", ""]
    curves_figure(cells_root, cells, "val_loss", out / "figures" / "validation_curves.png")
    md += ["## Convergence", "", *convergence_note(abl, "validation loss"), "",
           f"## Claims (one-sided paired bootstrap of test AUC, per-case probabilities averaged over seeds; α = {alpha}; "
           f"MDE at power {verdicts.POWER:.0%})", "", *verdicts.markdown(cl, metric="AUC", scale=1, digits=3)]
    return finish_report(out, md, cells, cl)
