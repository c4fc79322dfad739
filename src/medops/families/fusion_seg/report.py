"""`medops report`: aggregate ablation cells into paper-shaped tables with 95 % CIs over seeds,
paired per-case tests of each claim the paper makes, a loss-curve table and a missing-modality table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medops.config import AblationConfig
from medops.experiments import ablation
from medops.experiments import claims as verdicts
from medops.experiments.ablation import baseline_cell, bar_chart, cell_for, fmt
from medops.experiments.stats import mean_ci, paired_test
from medops.families.fusion_seg.references import CLAIMS_000, PAPER_000, TABLE_TITLES

METRICS = ("dsc", "iou", "sensitivity", "specificity")


def per_case(cells_root: Path, abl: AblationConfig, cells: pd.DataFrame, condition: str = "full") -> dict:
    """cell -> per-case DSC averaged over the cell's finished seeds (index: case_id)."""
    out = {}
    for cell, g in cells[cells.status == "finished"].groupby("cell"):
        frames = [pd.read_csv(cells_root / cell / f"seed{s}" / "per_case.csv") for s in g.seed]
        frames = [f[f.condition == condition].set_index("case_id").dsc for f in frames]
        out[cell] = pd.concat(frames, axis=1).mean(axis=1)
    return out


def claims(abl: AblationConfig, cells: pd.DataFrame, cases: dict, tables: dict, alpha: float) -> pd.DataFrame:
    """Each claim of paper 000 judged by the shared rules (experiments.claims): paired one-sided Wilcoxon on
    per-case DSC, the paper's DSC difference as the effect to detect."""
    rows = []
    for claim, factor, better, worse in CLAIMS_000:
        if factor not in abl.factors:
            continue
        t = tables[factor].set_index("level")

        def resolve(level):
            if level.startswith("best_of:"):
                opts = [lv for lv in level.split(":", 1)[1].split(",") if lv in t.index and t.loc[lv, "dsc_mean"] == t.loc[lv, "dsc_mean"]]
                if not opts:
                    return None, level
                lv = max(opts, key=lambda x: t.loc[x, "dsc_mean"])
                return cell_for(abl, factor, lv), lv
            return cell_for(abl, factor, level), level

        (ca, la), (cb, lb) = resolve(better), resolve(worse)
        row = {"claim": claim, "better": la, "worse": lb}
        if ca not in cases or cb not in cases:
            rows.append(verdicts.not_run(row, "a cell of the claim was not run, is missing or failed"))
            continue
        a, b = cases[ca].align(cases[cb], join="inner")
        paper = PAPER_000.get(factor, {})
        effect = (paper[la][0] - paper[lb][0]) / 100 if la in paper and lb in paper else float("nan")
        rows.append({**row, **verdicts.judge(paired_test(a.to_numpy(), b.to_numpy()), cells=cells, better_cell=ca,
                                             worse_cell=cb, paper_effect=effect, worse_value=float(b.mean()),
                                             alpha=alpha)})
    return pd.DataFrame(rows)


def loss_table(cells_root: Path, abl: AblationConfig, cells: pd.DataFrame) -> pd.DataFrame:
    base = baseline_cell(abl)
    ok = cells[(cells.cell == base) & (cells.status == "finished")]
    hists = [pd.read_csv(cells_root / base / f"seed{s}" / "history.csv") for s in ok.seed]
    rows = []
    for pe, (ptr, pva) in PAPER_000["loss"].items():
        ep = max(1, round(abl.epochs * pe / 100))
        tr = [h.loc[h.epoch == ep, "train_loss"].iloc[0] for h in hists if (h.epoch == ep).any()]
        va = [h.loc[h.epoch == ep, "val_loss"].iloc[0] for h in hists if (h.epoch == ep).any()]
        (tm, th), (vm, vh) = mean_ci(tr), mean_ci(va)
        rows.append({"paper_epoch": pe, "our_epoch": ep, "train_loss_mean": tm, "train_loss_ci95": th,
                     "val_loss_mean": vm, "val_loss_ci95": vh, "paper_train_loss": ptr, "paper_val_loss": pva})
    return pd.DataFrame(rows)


def missing_modality_table(cells_root: Path, abl: AblationConfig, cells: pd.DataFrame) -> pd.DataFrame:
    base = baseline_cell(abl)
    ok = cells[(cells.cell == base) & (cells.status == "finished")]
    per_seed = [pd.read_csv(cells_root / base / f"seed{s}" / "per_case.csv").groupby("condition").dsc.mean()
                for s in ok.seed]
    if not per_seed:
        return pd.DataFrame(columns=["condition", "dsc_mean", "dsc_ci95"])
    df = pd.concat(per_seed, axis=1)
    rows = [{"condition": c, "dsc_mean": mean_ci(df.loc[c])[0], "dsc_ci95": mean_ci(df.loc[c])[1]} for c in df.index]
    return pd.DataFrame(rows).sort_values("condition", key=lambda s: s != "full")


def _md_table(table: pd.DataFrame) -> str:
    head = ("| level | cell | seeds ok | epochs run | converged | DSC % | IoU % | Sens % | Spec % | paper DSC / IoU / Sens / Spec % |"
            "\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in table.itertuples():
        paper = " / ".join("—" if getattr(r, f"paper_{m}") != getattr(r, f"paper_{m}") else f"{100 * getattr(r, f'paper_{m}'):.1f}" for m in METRICS)
        lines.append(f"| {r.level} | {r.cell} | {r.seeds_ok} | {r.epochs} | {r.converged} | " + " | ".join(
            fmt(getattr(r, f"{m}_mean"), getattr(r, f"{m}_ci95")) for m in METRICS) + f" | {paper} |")
    return "\n".join(lines)


def build_report(cells_root: Path, abl: AblationConfig, out: Path, *, alpha: float = 0.05, profile: str = "") -> dict:
    cells = ablation.start_report(cells_root, abl, out, METRICS, extra=("best_val_dice",))
    cases = per_case(cells_root, abl, cells)
    tables = ablation.factor_tables(abl, cells, METRICS, PAPER_000, METRICS)
    cl = claims(abl, cells, cases, tables, alpha)
    cl.to_csv(out / "claims.csv", index=False)
    lt = loss_table(cells_root, abl, cells)
    lt.to_csv(out / "loss_table.csv", index=False)
    mm = missing_modality_table(cells_root, abl, cells)
    mm.to_csv(out / "missing_modality.csv", index=False)
    md = [f"# Ablation report ({profile} profile, {len(abl.seeds)} seeds, at most {abl.epochs} epochs per cell)", "",
          "Test-split metrics, mean ± 95 % t-interval over seeds; the paper's number beside ours. "
          "Simulated data: our numbers are not comparable in level with the paper's, only in ordering.", ""]
    for factor, t in tables.items():
        t.to_csv(out / f"table_{factor}.csv", index=False)
        title = TABLE_TITLES.get(factor, factor)
        bar_chart(t, title, out / "figures" / f"{factor}.png")
        md += [f"## {title}", "", _md_table(t), "", f"![{factor}](figures/{factor}.png)", ""]
    ablation.curves_figure(cells_root, cells, "val_dice", out / "figures" / "validation_curves.png")
    md += ["## Convergence", "", *ablation.convergence_note(abl, "validation DSC"), "",
           "## Claims (one-sided Wilcoxon signed-rank on per-case DSC, seeds averaged; α = "
           f"{alpha}; MDE at power {verdicts.POWER:.0%}; DSC in %)", "",
           *verdicts.markdown(cl, metric="DSC", scale=100, digits=1)]
    md += ["", "## Loss curve (paper 000, Table 8), baseline cell", "",
           "| paper epoch | our epoch | train loss | val loss | paper train | paper val |", "|---|---|---|---|---|---|"]
    for r in lt.itertuples():
        md.append(f"| {r.paper_epoch} | {r.our_epoch} | {fmt(r.train_loss_mean, r.train_loss_ci95, 1, 3)} | "
                  f"{fmt(r.val_loss_mean, r.val_loss_ci95, 1, 3)} | {r.paper_train_loss} | {r.paper_val_loss} |")
    md += ["", "## Missing modality at test time (baseline cell)", "", "| condition | DSC % |", "|---|---|"]
    for r in mm.itertuples():
        md.append(f"| {r.condition} | {fmt(r.dsc_mean, r.dsc_ci95)} |")
    tri = tables["modalities"].set_index("level").get("dsc_mean", {}).get(abl.baseline.get("modalities"), float("nan")) \
        if "modalities" in tables else float("nan")
    return ablation.finish_report(out, md, cells, cl, tri_modal_dsc=tri)
