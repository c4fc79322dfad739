"""Honest verdicts for a paper's claims, shared by every family's report.

A claim "level A > level B" is tested by a one-sided paired test on the test cases (the family supplies
the test: per-case Wilcoxon for a per-case metric, a paired bootstrap for AUC). Three verdicts:

- ``untestable`` — a cell of the claim did not converge (its seeds hit the epoch budget before their
  validation metric plateaued), the test set is too small to see the paper's effect (the minimum
  detectable effect, MDE, is larger than the effect the paper reports), or there is no headroom (the
  worse arm is already so close to the metric's ceiling that the paper's effect cannot show);
- ``reproduced`` — A beats B with p < α;
- ``not reproduced`` — a converged, adequately powered test did not find A > B.

MDE at one-sided α with power 1 − β, from the test's own standard error of the difference (the
bootstrap's, or sd(d)/√n for per-case differences — the normal approximation): (z₁₋α + z₁₋β) · SE.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

POWER = 0.8


def minimum_detectable_effect(se: float, alpha: float = 0.05, power: float = POWER) -> float:
    if se != se:
        return float("nan")
    return float((stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)) * se)


def convergence(cells: pd.DataFrame, cell: str) -> tuple[bool, str]:
    """Whether every finished seed of ``cell`` stopped on a plateau (early stopping), with the reason if not."""
    g = cells[(cells.cell == cell) & (cells.status == "finished")]
    if g.empty:
        return False, f"cell {cell} has no finished seed"
    stuck = g[~g.converged.fillna(False).astype(bool)]
    if stuck.empty:
        return True, ""
    budget = int(g.epochs.max()) if g.epochs.notna().any() else "?"
    return False, (f"cell {cell} did not converge: {len(stuck)}/{len(g)} seeds ran the whole {budget}-epoch budget "
                   f"without a plateau")


def judge(res: dict, *, cells: pd.DataFrame, better_cell: str, worse_cell: str, paper_effect: float,
          worse_value: float, ceiling: float = 1.0, alpha: float = 0.05) -> dict:
    """The verdict of one claim from its paired test ``res`` (n, mean_diff, ci_low, ci_high, p, se)."""
    mde = minimum_detectable_effect(res.get("se", float("nan")), alpha)
    out = {**res, "mde": mde, "paper_effect": paper_effect}
    reasons = [r for ok, r in (convergence(cells, better_cell), convergence(cells, worse_cell)) if not ok]
    if reasons:
        return {**out, "verdict": "untestable", "reason": "; ".join(reasons)}
    if res["p"] < alpha and res["mean_diff"] > 0:
        return {**out, "verdict": "reproduced", "reason": ""}
    if paper_effect == paper_effect:
        if worse_value == worse_value and worse_value + paper_effect > ceiling + 1e-9:
            return {**out, "verdict": "untestable",
                    "reason": f"ceiling: the worse arm already scores {worse_value:.3f}, the paper's effect "
                              f"{paper_effect:+.3f} cannot show below {ceiling:g}"}
        if mde == mde and mde > paper_effect:
            return {**out, "verdict": "untestable",
                    "reason": f"underpowered: MDE {mde:.3f} > the paper's effect {paper_effect:.3f} on {res['n']} cases"}
        return {**out, "verdict": "not reproduced", "reason": ""}
    return {**out, "verdict": "not reproduced", "reason": "the paper gives no effect size: power not judged"}


def judge_auc_claim(row: dict, cases: dict, better_cell: str | None, worse_cell: str | None, *, cells: pd.DataFrame,
                    paper_effect: float, alpha: float = 0.05) -> dict:
    """A claim "better_cell > worse_cell" on test AUC: one-sided paired bootstrap over the cases both cells tested
    (``cases``: cell -> DataFrame indexed by case with ``label_idx`` and ``prob``), then :func:`judge`."""
    from medops.metrics.classification import binary_auc, paired_auc_test

    if better_cell not in cases or worse_cell not in cases:
        return not_run(row, "a cell of the claim was not run, is missing or failed")
    a, b = cases[better_cell], cases[worse_cell]
    common = a.index.intersection(b.index)
    y = a.loc[common, "label_idx"].to_numpy()
    pb = b.loc[common, "prob"].to_numpy()
    res = paired_auc_test(y, a.loc[common, "prob"].to_numpy(), pb)
    return {**row, **judge(res, cells=cells, better_cell=better_cell, worse_cell=worse_cell, paper_effect=paper_effect,
                           worse_value=binary_auc(y, pb), alpha=alpha)}


def not_run(row: dict, why: str) -> dict:
    return {**row, "verdict": "untestable", "reason": why}


def markdown(cl: pd.DataFrame, *, metric: str, scale: float, digits: int) -> list[str]:
    """The claims table: verdict, effect with its 95 % CI, p, MDE, the paper's effect and the reason."""
    def f(v, signed=True):
        if v != v:
            return "—"
        return f"{v * scale:{'+' if signed else ''}.{digits}f}"
    lines = [f"| claim | better | worse | n | Δ{metric} [95 % CI] | p | MDE | paper Δ | verdict | reason |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in cl.to_dict("records"):
        if "p" in r and r["p"] == r["p"]:
            eff = f"{f(r['mean_diff'])} [{f(r['ci_low'])}, {f(r['ci_high'])}]"
            n, p, mde = int(r["n"]), f"{r['p']:.3g}", f(r.get("mde", math.nan), False)
        else:
            eff, n, p, mde = "—", "—", "—", "—"
        lines.append(f"| {r['claim']} | {r['better']} | {r['worse']} | {n} | {eff} | {p} | {mde} | "
                     f"{f(r.get('paper_effect', math.nan))} | **{r['verdict']}** | {r.get('reason', '') or ''} |")
    return lines
