"""Promotion decisions (pure): pick the candidate, evaluate the gates."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from medops.experiments.stats import paired_test


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    reason: str


def select_candidate(cells: pd.DataFrame) -> pd.Series:
    """Best cell by mean validation DSC over its finished seeds, then its best seed (validation
    DSC): the test split is never used to choose."""
    ok = cells[(cells.status == "finished") & (cells.run_id.astype(str) != "")]
    if ok.empty:
        raise ValueError("no finished ablation cell to promote")
    best_cell = ok.groupby("cell").best_val_dice.mean().idxmax()
    g = ok[ok.cell == best_cell]
    return g.loc[g.best_val_dice.idxmax()]


def evaluate_gates(*, validation: str, test_mean: float, floor: float, metric: str,
                   candidate_cases: pd.Series, champion_cases: pd.Series | None, alpha: float) -> list[Gate]:
    gates = [Gate("data_validated", validation == "passed",
                  "its dataset passed validation" if validation == "passed"
                  else f"its dataset did not pass validation (validation={validation})"),
             Gate("metric_floor", test_mean >= floor, f"test {metric} {test_mean:.4f} {'≥' if test_mean >= floor else '<'} floor {floor}")]
    if champion_cases is None:
        gates.append(Gate("beats_champion", True, "no current champion"))
    else:
        a, b = candidate_cases.align(champion_cases, join="inner")
        if len(a) == 0 or len(a) != len(candidate_cases) or len(b) != len(champion_cases):
            gates.append(Gate("beats_champion", False, "champion was tested on other cases: not comparable"))
        else:
            res = paired_test(a.to_numpy(), b.to_numpy())
            ok = res["p"] < alpha and res["mean_diff"] > 0
            gates.append(Gate("beats_champion", ok, f"paired Wilcoxon vs champion on {res['n']} cases: "
                                                   f"mean Δ{metric} {res['mean_diff']:+.4f}, p={res['p']:.3g} (α={alpha})"))
    return gates
