"""`medops report nodule3d`: paper 004 Table 3 shaped results over patient-level folds (the ablation's seeds
are the folds: a cell's seed k tests on fold k, validates on fold k+1, trains on the rest), the paper's
numbers beside ours, and the paper's claims tested by paired bootstrap of AUC over every nodule (each
tested once, by the fold that held it out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medops.config import AblationConfig
from medops.experiments import claims as verdicts
from medops.experiments.ablation import convergence_note, curves_figure, finish_report, start_report
from medops.families.nodule3d.references import IFM_NOTE, PAPER_ROW, TABLE3, TABLE3_METRICS

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")


def per_case(cells_root: Path, cells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """cell -> every nodule its folds tested: label and malignant probability (folds concatenated)."""
    out = {}
    for cell, g in cells[cells.status == "finished"].groupby("cell"):
        frames = [pd.read_csv(cells_root / cell / f"seed{s}" / "per_case.csv") for s in g.seed]
        df = pd.concat(frames).drop_duplicates("case_id").set_index("case_id")
        out[cell] = pd.DataFrame({"label_idx": df.label_idx, "prob": df.prob_malignant})
    return out


def cell_table(abl: AblationConfig, cells: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its levels, folds finished, epochs, convergence, mean and std over folds of each metric."""
    rows = []
    for cell in abl.cells:
        lv = abl.levels(cell)
        g = cells[(cells.cell == cell) & (cells.status == "finished")]
        row = {"cell": cell, "arch": lv.get("arch", ""), "folds_ok": f"{len(g)}/{int((cells.cell == cell).sum())}",
               "epochs": "/".join(str(int(e)) for e in g.epochs if e == e) or "—",
               "converged": f"{int(g.converged.sum())}/{len(g)}"}
        for m in METRICS:
            v = g[f"test_{m}"].astype(float)
            row[f"{m}_mean"], row[f"{m}_std"] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else np.nan) \
                if len(v) else (np.nan, np.nan)
        key = (lv.get("arch", ""), lv.get("branches", "") if lv.get("arch") == "nodule3d_ifm" else "")
        same_training = all(lv.get(f) == abl.baseline.get(f) for f in abl.factors if f not in ("arch", "branches", "scale"))
        row["paper_row"] = PAPER_ROW.get(key, "") if same_training else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _claim_cells(abl: AblationConfig, table: pd.DataFrame, cells: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(claim, better cell, worse cell) for the paper's claims that the configured cells can test."""
    by = {c: abl.levels(c) for c in abl.cells}
    find = lambda **kw: [c for c, lv in by.items() if all(lv.get(k) == v for k, v in kw.items())]  # noqa: E731
    base = abl.baseline
    out = []
    ens = find(**base)
    singles = find(**{**base, "arch": "nodule3d_subnet"}) or [c for c, lv in by.items() if lv.get("arch") == "nodule3d_subnet"]
    if ens and singles:
        sel = cells[cells.status == "finished"].groupby("cell").selection.mean()
        best = max(singles, key=lambda c: sel.get(c, -np.inf))          # chosen on validation, not on test
        out.append(("ensemble > best single scale", ens[0], best))
    ce = find(**{**base, "loss": "ce"})
    if ens and ce:
        out.append(("CE + AUC loss > CE", ens[0], ce[0]))
    ifm = [c for c, lv in by.items() if lv.get("arch") == "nodule3d_ifm" and lv.get("branches") == "macro_micro_general"]
    if ifm:
        for c, lv in by.items():
            if lv.get("arch") == "nodule3d_ifm" and lv.get("branches") != "macro_micro_general":
                out.append((f"IFM > its {lv.get('branches')} channel alone", ifm[0], c))
        for c, lv in by.items():
            if lv.get("arch") in ("monai_resnet3d", "monai_densenet3d"):
                out.append((f"IFM > {lv['arch']} baseline", ifm[0], c))
    return out


def claims(abl: AblationConfig, table: pd.DataFrame, cells: pd.DataFrame, cases: dict, alpha: float) -> pd.DataFrame:
    paper_auc = {k: v[3][0] for k, v in TABLE3.items()}
    rows = []
    paper_row = table.set_index("cell").paper_row
    for claim, ca, cb in _claim_cells(abl, table, cells):
        ra, rb = paper_row.get(ca, ""), paper_row.get(cb, "")
        effect = (paper_auc[ra] - paper_auc[rb]) / 100 if ra and rb else float("nan")
        rows.append(verdicts.judge_auc_claim({"claim": claim, "better": ca, "worse": cb}, cases, ca, cb, cells=cells,
                                             paper_effect=effect, alpha=alpha))
    return pd.DataFrame(rows)


def _md_table(t: pd.DataFrame) -> list[str]:
    head = "| cell | model | folds ok | epochs | converged | " + " | ".join(
        f"{m} %" for m in TABLE3_METRICS) + " | specificity % | paper (Table 3) |"
    lines = [head, "|" + "---|" * (6 + len(TABLE3_METRICS))]
    f = lambda m, s: "—" if m != m else (f"{100 * m:.1f} ± {100 * s:.1f}" if s == s else f"{100 * m:.1f}")  # noqa: E731
    for r in t.to_dict("records"):
        paper = ""
        if r["paper_row"]:
            paper = f"{r['paper_row']}: " + " / ".join(f"{v:.2f}" for v, _ in TABLE3[r["paper_row"]])
        lines.append(f"| {r['cell']} | {r['arch']} | {r['folds_ok']} | {r['epochs']} | {r['converged']} | "
                     + " | ".join(f(r[f"{m}_mean"], r[f"{m}_std"]) for m in TABLE3_METRICS)
                     + f" | {f(r['specificity_mean'], r['specificity_std'])} | {paper} |")
    return lines


def bar_figure(t: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(t)), 3.6))
    x = np.arange(len(t))
    for i, (m, c) in enumerate((("auc", "tab:blue"), ("f1", "tab:orange"))):
        ax.bar(x + (i - 0.5) * 0.4, t[f"{m}_mean"], 0.4, yerr=t[f"{m}_std"].fillna(0), capsize=3, color=c,
               label=f"ours {m.upper()} (mean ± std over folds)")
    for j, r in enumerate(t.paper_row):
        if r:
            ax.scatter([j - 0.2], [TABLE3[r][3][0] / 100], marker="D", color="tab:red", zorder=3,
                       label="paper AUC" if j == int(np.argmax([bool(v) for v in t.paper_row])) else None)
    ax.set_xticks(x, t.cell, rotation=30, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test score")
    ax.set_title("nodule3d: models and losses over patient-level folds", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def build_report(cells_root: Path, abl: AblationConfig, out: Path, *, alpha: float = 0.05, profile: str = "") -> dict:
    cells = start_report(cells_root, abl, out, METRICS)
    table = cell_table(abl, cells)
    table.to_csv(out / "table3.csv", index=False)
    cl = claims(abl, table, cells, per_case(cells_root, cells), alpha)
    cl.to_csv(out / "claims.csv", index=False)
    bar_figure(table, out / "figures" / "models.png")
    curves_figure(cells_root, cells, "val_auc", out / "figures" / "validation_curves.png")
    md = [f"# Ablation report ({profile} profile, folds {list(abl.seeds)}, at most {abl.epochs} epochs per cell)", "",
          "Patient-level folds: a cell's seed k tests on fold k and selects on fold k+1. Test metrics at cutoff 0.5, "
          "mean ± std over folds as in paper 004 Table 3, the paper's row beside ours where one corresponds. "
          "Simulated images around real LIDC-IDRI nodules: levels are not comparable with the paper's, only orderings.",
          "", "## Table 3 (models and losses)", "", *_md_table(table), "", IFM_NOTE, "", "![models](figures/models.png)",
          "", "## Convergence", "", *convergence_note(abl, "validation AUC"), "",
          f"## Claims (one-sided paired bootstrap of test AUC over every nodule, each tested by the fold that held it "
          f"out; α = {alpha}; MDE at power {verdicts.POWER:.0%})", "",
          *verdicts.markdown(cl, metric="AUC", scale=1, digits=3), "",
          "The best single scale is the one with the best mean validation AUC (chosen without the test folds)."]
    return finish_report(out, md, cells, cl)
