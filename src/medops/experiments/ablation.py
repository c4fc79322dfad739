"""Generic ablation aggregation, shared by every family's report: collect the cells' status files,
one table per factor (mean ± 95 % CI over seeds beside the paper's numbers), bar charts with error
bars, and the gaps (failed or missing cells)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medops.config import AblationConfig
from medops.experiments.stats import mean_ci

def collect(cells_root: Path, abl: AblationConfig, metrics: tuple, extra: tuple = ()) -> pd.DataFrame:
    """One row per (cell, seed): status, reason, epochs run, whether it converged (stopped on a plateau of
    its validation metric before the budget), validation score (``selection``), test metrics, run id (and
    the ``extra`` keys of each cell's status.json)."""
    rows = []
    for cell in abl.cells:
        for seed in abl.seeds:
            d = cells_root / cell / f"seed{seed}"
            st = json.loads((d / "status.json").read_text()) if (d / "status.json").exists() else {"status": "missing"}
            run = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {}
            rows.append({"cell": cell, "seed": seed, "status": st["status"], "reason": st.get("reason", ""),
                         "epochs": st.get("epochs", np.nan), "converged": bool(st.get("converged", st.get("early_stopped", False))),
                         **{k: st.get(k, np.nan) for k in extra},
                         "selection": st.get("selection_score", np.nan),
                         "run_id": run.get("run_id", ""),
                         **{f"test_{m}": st.get("test", {}).get(m, np.nan) for m in metrics}})
    return pd.DataFrame(rows)


def start_report(cells_root: Path, abl: AblationConfig, out: Path, metrics: tuple, extra: tuple = ()) -> pd.DataFrame:
    """The report folder (with ``figures/``) and the cells' table, also written as ``cells.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    cells = collect(cells_root, abl, metrics, extra)
    cells.to_csv(out / "cells.csv", index=False)
    return cells


def finish_report(out: Path, md: list[str], cells: pd.DataFrame, claims: pd.DataFrame, **extra) -> dict:
    """``report.md`` (the lines ``md`` + the gaps) and ``summary.json`` (cells finished, each claim's verdict and
    ``extra``); returns the summary."""
    (out / "report.md").write_text("\n".join(md + gaps_section(cells)) + "\n")
    summary = {"n_cells": int(len(cells)), "n_finished": int((cells.status == "finished").sum()),
               "claims": {r["claim"]: r["verdict"] for r in claims.to_dict("records")}, **extra}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def cell_for(abl: AblationConfig, factor: str, level: str) -> str | None:
    target = {**abl.baseline, factor: level}
    for cell in abl.cells:
        if abl.levels(cell) == target:
            return cell
    return None


def baseline_cell(abl: AblationConfig) -> str | None:
    return cell_for(abl, next(iter(abl.factors)), abl.baseline[next(iter(abl.factors))])


def fmt(mean, half, scale=100.0, digits=1):
    if mean != mean:
        return "—"
    return (f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}" if half == half
            else f"{mean * scale:.{digits}f}")


def factor_tables(abl: AblationConfig, cells: pd.DataFrame, metrics: tuple, paper: dict,
                  paper_metrics: tuple) -> dict[str, pd.DataFrame]:
    """One table per factor: each level's cell, seeds finished, mean ± 95 % CI of every test metric over
    seeds, and the paper's numbers (``paper[factor][level]``, in %, in the order of ``paper_metrics``)."""
    tables = {}
    for factor, levels in abl.factors.items():
        rows = []
        for level in levels:
            cell = cell_for(abl, factor, level)
            g = cells[(cells.cell == cell) & (cells.status == "finished")] if cell else cells.iloc[0:0]
            n_all = int((cells.cell == cell).sum()) if cell else 0
            row = {"level": level, "cell": cell or "(not run)", "seeds_ok": f"{len(g)}/{n_all}",
                   "epochs": "/".join(str(int(e)) for e in g.epochs if e == e) or "—",
                   "converged": f"{int(g.converged.sum())}/{len(g)}"}
            for m in metrics:
                row[f"{m}_mean"], row[f"{m}_ci95"] = mean_ci(g[f"test_{m}"])
            ref = paper.get(factor, {}).get(level)
            for m, v in zip(paper_metrics, ref or (np.nan,) * len(paper_metrics)):
                row[f"paper_{m}"] = v / 100 if v == v else np.nan
            rows.append(row)
        tables[factor] = pd.DataFrame(rows)
    return tables


def bar_chart(table: pd.DataFrame, title: str, out: Path, metrics: tuple = ("dsc",), ylabel: str = "test DSC") -> None:
    """Grouped bars per level (mean ± 95 % CI over seeds) for ``metrics``; the paper's values as diamonds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(table)), 3.6))
    x = np.arange(len(table))
    w = 0.8 / len(metrics)
    for i, (m, colour) in enumerate(zip(metrics, ("tab:blue", "tab:orange", "tab:green"))):
        off = x + (i - (len(metrics) - 1) / 2) * w
        name = m.upper() if len(m) <= 3 else m
        ax.bar(off, table[f"{m}_mean"], w, yerr=table[f"{m}_ci95"].fillna(0), capsize=4, color=colour,
               label=f"ours {name} (mean ± 95 % CI)")
        if f"paper_{m}" in table and table[f"paper_{m}"].notna().any():
            ax.scatter(off, table[f"paper_{m}"], marker="D", color="tab:red", zorder=3, label=f"paper {name}")
    ax.set_xticks(x, table.level, rotation=15)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def gaps_section(cells: pd.DataFrame) -> list[str]:
    """Report lines listing the failed or missing (cell, seed) runs with their reasons (none: no lines)."""
    failed = cells[cells.status != "finished"]
    if not len(failed):
        return []
    return ["", "## Gaps (failed or missing cells)", "", "| cell | seed | status | reason |", "|---|---|---|---|",
            *(f"| {r.cell} | {r.seed} | {r.status} | {r.reason} |" for r in failed.itertuples())]


def curves_figure(cells_root: Path, cells: pd.DataFrame, column: str, out: Path) -> None:
    """Validation ``column`` per epoch, one panel per cell, one line per seed; a dot where a seed stopped on a
    plateau, a cross where it ran out of budget: whether a cell converged is visible at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(cells.cell))
    cols = min(4, max(1, len(names)))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.2 * rows), squeeze=False, sharey=True)
    for ax, cell in zip(axes.flat, names):
        for r in cells[(cells.cell == cell) & (cells.status == "finished")].itertuples():
            hist = cells_root / cell / f"seed{r.seed}" / "history.csv"
            if not hist.exists():
                continue
            h = pd.read_csv(hist)
            if column not in h:
                continue
            line, = ax.plot(h.epoch, h[column], lw=1, label=f"seed {r.seed}")
            ax.plot(h.epoch.iloc[-1], h[column].iloc[-1], "o" if r.converged else "x", color=line.get_color())
        ax.set_title(cell, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"validation {column} per epoch (o: stopped on a plateau, x: budget ran out)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def convergence_note(abl: AblationConfig, metric: str) -> list[str]:
    patience = f"{abl.patience} epochs" if abl.patience else "the family's train.early_stopping epochs"
    if abl.min_delta:
        patience += f" by more than {abl.min_delta:g}"
    return [f"Each cell trains until its {metric} has not improved for {patience} (converged: o), at most "
            f"{abl.epochs} epochs (budget ran out: x). A claim with an unconverged cell is untestable.",
            "", "![validation curves](figures/validation_curves.png)"]
