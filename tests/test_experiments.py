"""Ablation spec checks, statistics, report aggregation and promotion gates (no training)."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medops.config import AblationConfig, load_config
from medops.errors import ConfigError
from medops.experiments.promotion import evaluate_gates, select_candidate
from medops.families.fusion_seg.report import build_report
from medops.experiments.stats import mean_ci, paired_test
from conftest import ROOT

FACTORS = {"modalities": ["us", "mg", "mri", "us_mg", "mg_mri", "us_mri", "us_mg_mri"],
           "fusion": ["early", "late", "concat", "attention"]}
BASE = {"modalities": "us_mg_mri", "fusion": "attention"}


def _params_with_cell(tmp_path, cell: str, levels: dict):
    import shutil

    from conftest import edit_params

    p = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", p)
    edit_params(p, lambda d: d["ablation"]["fusion_seg"]["cells"].update({cell: levels}))
    return p


def test_unknown_factor_or_level_fails_naming_it(tmp_path):
    p = _params_with_cell(tmp_path, "us", {"modalities": "ultrasound"})
    with pytest.raises(ConfigError, match=r"cells.us.*unknown level 'ultrasound' of factor 'modalities'"):
        load_config(p)
    p = _params_with_cell(tmp_path, "late", {"fuzion": "late"})
    with pytest.raises(ConfigError, match=r"cells.late.*unknown factor 'fuzion'"):
        load_config(p)


def test_cli_refuses_bad_ablation_before_training(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medops.cli import app

    p = _params_with_cell(tmp_path, "mg", {"modalities": "xray"})
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["--params", str(p), "train", "fusion_seg", "--cell", "mg", "--seed", "1"])
    assert res.exit_code == 2
    assert "unknown level 'xray'" in res.output
    assert not (tmp_path / "models").exists()


def test_cells_map_to_model_and_train_configs():
    cfg = load_config(ROOT / "params.yaml", profile="paper")
    fam = cfg.family("fusion_seg")
    abl = fam.ablation
    assert len(abl.seeds) >= 3
    assert abl.cell_model("us_mg", fam.model).modalities == ("us", "mg")
    assert abl.cell_model("late", fam.model).fusion == "late"
    assert abl.cell_model("unet", fam.model).arch == "unet"
    t = abl.cell_train("us", fam.train, seed=2)
    assert (t.seed, t.epochs, t.lr) == (2, 100, 1e-4)
    a2 = AblationConfig(seeds=(1,), epochs=1, factors={"lr": [0.1, 1e30]}, baseline={"lr": 0.1}, cells={"nan": {"lr": 1e30}})
    assert a2.cell_train("nan", fam.train, 1).lr == 1e30


def test_mean_ci_is_a_t_interval():
    v = [0.8, 0.9, 0.85]
    m, h = mean_ci(v)
    assert m == pytest.approx(0.85)
    assert h == pytest.approx(stats.t.ppf(0.975, 2) * np.std(v, ddof=1) / np.sqrt(3))
    assert np.isnan(mean_ci([0.5])[1])


def test_paired_test_direction_and_size():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.5, 0.8, 40)
    better = paired_test(b + 0.05 + rng.normal(0, 0.01, 40), b)
    assert better["p"] < 0.001 and better["ci_low"] > 0
    worse = paired_test(b - 0.05, b)
    assert worse["p"] > 0.5
    assert paired_test(b, b)["p"] == 1.0


def _fake_cells(root, spec):
    """spec: cell -> (per-case dsc offset, status[, converged]). Writes what `medops train --cell` writes."""
    cases = [f"c{i}" for i in range(30)]
    base = np.random.default_rng(1).uniform(0.5, 0.7, 30)
    for cell, (offset, status, *conv) in spec.items():
        for seed in (1, 2, 3):
            d = root / cell / f"seed{seed}"
            d.mkdir(parents=True)
            if status == "failed":
                (d / "status.json").write_text(json.dumps({"status": "failed", "reason": "non-finite training loss"}))
                continue
            dsc = np.clip(base + offset + 0.01 * seed, 0, 1)
            pd.DataFrame({"case_id": cases, "condition": "full", "dsc": dsc, "iou": dsc / (2 - dsc),
                          "sensitivity": dsc, "specificity": 0.99}).to_csv(d / "per_case.csv", index=False)
            pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "train_loss": [1, .8, .6, .5, .4],
                          "val_loss": [1.1, .9, .7, .6, .5]}).to_csv(d / "history.csv", index=False)
            (d / "status.json").write_text(json.dumps({
                "status": "finished", "best_val_dice": float(dsc.mean()), "selection_score": float(dsc.mean()),
                "epochs": 5, "early_stopped": conv[0] if conv else True,
                "test": {"dsc": float(dsc.mean()), "iou": float((dsc / (2 - dsc)).mean()),
                         "sensitivity": float(dsc.mean()), "specificity": 0.99}}))
            (d / "run.json").write_text(json.dumps({"run_id": f"{cell}{seed}"}))


def test_report_tables_claims_and_gaps(tmp_path):
    cells = {"tri": {}, "us": {"modalities": "us"}, "mg": {"modalities": "mg"}, "mri": {"modalities": "mri"},
             "us_mg": {"modalities": "us_mg"}, "concat": {"fusion": "concat"}, "late": {"fusion": "late"}}
    abl = AblationConfig(seeds=(1, 2, 3), epochs=5, factors=FACTORS, baseline=BASE, cells=cells)
    _fake_cells(tmp_path / "cells", {"tri": (0.2, "ok"), "us": (0.0, "ok", False), "mg": (0.05, "ok"), "mri": (0.1, "ok"),
                                     "us_mg": (0.12, "ok"), "concat": (0.2, "ok"), "late": (0.1, "failed")})
    summary = build_report(tmp_path / "cells", abl, tmp_path / "rep", profile="test")
    out = tmp_path / "rep"
    mod = pd.read_csv(out / "table_modalities.csv").set_index("level")
    assert mod.loc["us_mg_mri", "cell"] == "tri" and mod.loc["us_mg_mri", "seeds_ok"] == "3/3"
    assert mod.loc["mg_mri", "cell"] == "(not run)"
    assert mod.loc["us_mg_mri", "paper_dsc"] == pytest.approx(0.928)
    assert mod.loc["us", "dsc_mean"] < mod.loc["us_mg_mri", "dsc_mean"]
    claims = pd.read_csv(out / "claims.csv").set_index("claim")
    assert claims.loc["tri-modal > best bimodal", "verdict"] == "reproduced"
    assert claims.loc["tri-modal > best bimodal", "worse"] == "us_mg"
    assert claims.loc["MRI > mammography (unimodal)", "verdict"] == "reproduced"
    assert claims.loc["attention > plain feature fusion", "verdict"] == "not reproduced"  # equal offsets
    assert claims.loc["tri-modal > best unimodal", "verdict"] == "reproduced"    # vs mri, both converged
    assert claims.loc["feature fusion > late fusion", "verdict"] == "untestable"
    assert "missing or failed" in claims.loc["feature fusion > late fusion", "reason"]
    unconverged = claims.loc["mammography > ultrasound (unimodal)"]  # mg beats us clearly, but us never plateaued
    assert unconverged.verdict == "untestable" and "cell us did not converge: 3/3 seeds" in unconverged.reason
    assert claims.loc["attention > plain feature fusion", "paper_effect"] == pytest.approx(0.026)
    assert claims.loc["attention > plain feature fusion", "mde"] == pytest.approx(0.0)    # identical per-case values
    assert mod.loc["us", "converged"] == "0/3" and mod.loc["mri", "converged"] == "3/3" and mod.loc["mri", "epochs"] == "5/5/5"
    assert (out / "figures/validation_curves.png").stat().st_size > 5000
    md = (out / "report.md").read_text()
    assert "## Gaps" in md and "| late | 1 | failed | non-finite training loss |" in md
    assert "| MDE | paper Δ | verdict | reason |" in md and "**untestable** | cell us did not converge" in md
    assert (out / "figures/modalities.png").stat().st_size > 5000
    lt = pd.read_csv(out / "loss_table.csv")
    assert list(lt.paper_epoch) == [20, 40, 60, 80, 100] and list(lt.our_epoch) == [1, 2, 3, 4, 5]
    assert summary["n_finished"] == 18 and summary["n_cells"] == 21


def test_candidate_is_chosen_on_validation_not_test(tmp_path):
    """What `medops promote` does: collect the cells' status.json files, pick by the selection score
    (the family's validation metric at the best epoch), never by the test metric."""
    from medops.experiments.ablation import collect

    val = {("a", 1): 0.9, ("a", 2): 0.8, ("b", 1): 0.7, ("b", 2): 0.75}
    for (cell, seed), v in val.items():
        d = tmp_path / cell / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "status.json").write_text(json.dumps({"status": "finished", "selection_score": v,
                                                   "test": {"dsc": 0.1 if cell == "a" else 0.99}}))
        (d / "run.json").write_text(json.dumps({"run_id": f"{cell}{seed}"}))
    abl = AblationConfig(seeds=(1, 2), factors={"x": ["p", "q"]}, baseline={"x": "p"}, cells={"a": {}, "b": {"x": "q"}})
    cells = collect(tmp_path, abl, ("dsc",))
    assert list(cells.selection) == [0.9, 0.8, 0.7, 0.75]
    c = select_candidate(cells)
    assert (c.cell, c.seed, c.run_id) == ("a", 1, "a1")


def test_gates():
    cases = pd.Series(np.linspace(0.6, 0.9, 30), index=[f"c{i}" for i in range(30)])
    g = {x.name: x for x in evaluate_gates(validation="failed", test_mean=0.8, floor=0.5, metric="dsc",
                                            candidate_cases=cases, champion_cases=None, alpha=0.05)}
    assert not g["data_validated"].passed and "did not pass validation" in g["data_validated"].reason
    g = {x.name: x for x in evaluate_gates(validation="passed", test_mean=0.4, floor=0.5, metric="dsc",
                                            candidate_cases=cases, champion_cases=None, alpha=0.05)}
    assert not g["metric_floor"].passed and g["beats_champion"].passed
    g = {x.name: x for x in evaluate_gates(validation="passed", test_mean=0.8, floor=0.5, metric="dsc",
                                            candidate_cases=cases, champion_cases=cases - 0.05, alpha=0.05)}
    assert all(x.passed for x in g.values())
    g = {x.name: x for x in evaluate_gates(validation="passed", test_mean=0.8, floor=0.5, metric="dsc",
                                            candidate_cases=cases, champion_cases=cases, alpha=0.05)}
    assert not g["beats_champion"].passed
    other = cases.copy()
    other.index = [f"x{i}" for i in range(30)]
    g = {x.name: x for x in evaluate_gates(validation="passed", test_mean=0.8, floor=0.5, metric="dsc",
                                            candidate_cases=cases, champion_cases=other, alpha=0.05)}
    assert "not comparable" in g["beats_champion"].reason
    g = {x.name: x for x in evaluate_gates(validation="passed", test_mean=0.8, floor=0.5, metric="dsc",
                                            candidate_cases=cases, champion_cases=None, alpha=0.05,
                                            converged=(False, "mg seed 1 ran its whole 5-epoch budget"))}
    assert not g["converged"].passed and "5-epoch budget" in g["converged"].reason   # never promoted
    assert "converged" not in {x.name for x in evaluate_gates(
        validation="passed", test_mean=0.8, floor=0.5, metric="dsc", candidate_cases=cases, champion_cases=None,
        alpha=0.05)}                                                  # promote.require_converged: false


def test_three_verdicts_underpowered_and_ceiling_are_untestable_with_the_reason():
    """A test that could not have seen the paper's effect says so instead of 'not reproduced'."""
    from medops.experiments.claims import judge, minimum_detectable_effect

    rng = np.random.default_rng(0)
    ok = pd.DataFrame({"cell": ["a", "b"], "seed": [1, 1], "status": "finished", "converged": True, "epochs": 9})
    b = rng.uniform(0.6, 0.7, 10)
    noisy = paired_test(b + rng.normal(0.005, 0.2, 10), b)        # 10 cases, sd 0.2: cannot see 0.03
    v = judge(noisy, cells=ok, better_cell="a", worse_cell="b", paper_effect=0.03, worse_value=0.65)
    assert v["verdict"] == "untestable" and v["reason"].startswith("underpowered") and v["mde"] > 0.03
    assert v["mde"] == pytest.approx(minimum_detectable_effect(noisy["se"])) and noisy["se"] > 0
    b = rng.uniform(0.6, 0.7, 400)
    precise = paired_test(b + rng.normal(0.0, 0.01, 400), b)      # 400 cases: MDE << 0.03, no effect
    v = judge(precise, cells=ok, better_cell="a", worse_cell="b", paper_effect=0.03, worse_value=0.65)
    assert v["verdict"] == "not reproduced" and v["mde"] < 0.005
    v = judge({**precise, "p": 0.001, "mean_diff": 0.02}, cells=ok, better_cell="a", worse_cell="b",
              paper_effect=0.03, worse_value=0.65)
    assert v["verdict"] == "reproduced"
    tie = paired_test(np.ones(22), np.ones(22))                  # both arms perfect: no room for the effect
    v = judge(tie, cells=ok, better_cell="a", worse_cell="b", paper_effect=0.05, worse_value=1.0)
    assert v["verdict"] == "untestable" and v["reason"].startswith("ceiling")
    v = judge(precise, cells=ok, better_cell="a", worse_cell="b", paper_effect=float("nan"), worse_value=0.65)
    assert v["verdict"] == "not reproduced" and "no effect size" in v["reason"]
