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


def select_candidate(cells: pd.DataFrame, by: str = "selection") -> pd.Series:
    """Best cell by the mean of its finished seeds' validation score (``selection``: the family's
    validation metric at the best epoch, e.g. DSC or AUC), then its best seed: the test split is
    never used to choose."""
    ok = cells[(cells.status == "finished") & (cells.run_id.astype(str) != "")]
    ok = ok[ok[by].notna()]
    if ok.empty:
        raise ValueError("no finished ablation cell to promote")
    best_cell = ok.groupby("cell")[by].mean().idxmax()
    g = ok[ok.cell == best_cell]
    return g.loc[g[by].idxmax()]


def evaluate_gates(*, validation: str, test_mean: float, floor: float, metric: str,
                   candidate_cases, champion_cases, alpha: float, compare=None,
                   converged: tuple[bool, str] | None = None, more_floors: dict | None = None) -> list[Gate]:
    """Gates: validated data, test metric above the floor, the candidate's training converged (when
    ``converged`` is given: promote.require_converged), and (when there is a champion) a
    one-sided paired test on the same test cases. ``compare(candidate, champion)`` returns the
    test's dict (n, mean_diff, p, test) or None when the cases differ; default: paired Wilcoxon
    on per-case Series. ``more_floors``: metric -> (candidate's test value, floor), one gate each."""
    gates = [Gate("data_validated", validation == "passed",
                  "its dataset passed validation" if validation == "passed"
                  else f"its dataset did not pass validation (validation={validation})"),
             Gate("metric_floor", test_mean >= floor, f"test {metric} {test_mean:.4f} {'≥' if test_mean >= floor else '<'} floor {floor}")]
    for m, (value, fl) in (more_floors or {}).items():
        ok = value == value and value >= fl
        gates.append(Gate(f"floor_{m}", ok, f"test {m} {value:.4f} {'≥' if ok else '<'} floor {fl}"))
    if converged is not None:  # (converged, reason): a model from a run still improving at its budget's end
        gates.append(Gate("converged", converged[0], converged[1]))
    if champion_cases is None:
        gates.append(Gate("beats_champion", True, "no current champion"))
    else:
        res = (compare or paired_wilcoxon)(candidate_cases, champion_cases)
        if res is None:
            gates.append(Gate("beats_champion", False, "champion was tested on other cases: not comparable"))
        else:
            ok = res["p"] < alpha and res["mean_diff"] > 0
            gates.append(Gate("beats_champion", ok, f"{res.get('test', 'paired Wilcoxon')} vs champion on {res['n']} cases: "
                                                   f"mean Δ{metric} {res['mean_diff']:+.4f}, p={res['p']:.3g} (α={alpha})"))
    return gates


def paired_wilcoxon(candidate_cases: pd.Series, champion_cases: pd.Series) -> dict | None:
    """One-sided paired Wilcoxon on per-case values (index: case_id); None unless both hold the same cases."""
    a, b = candidate_cases.align(champion_cases, join="inner")
    if len(a) == 0 or len(a) != len(candidate_cases) or len(b) != len(champion_cases):
        return None
    return {**paired_test(a.to_numpy(), b.to_numpy()), "test": "paired Wilcoxon"}
