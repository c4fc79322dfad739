"""`medops promote <family>`: register the best ablation cell as `challenger`; move `champion` only
when every gate passes (validation, floor, paired test against the champion); `--rollback`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from medops import layout
from medops.errors import MedopsError
from medops.families import get_family


def _model_card(fam, version: str, cand, tags: dict, gates, cell_table_row: dict | None) -> str:
    family = fam.name
    lines = [f"# Model card — {family} version {version}", "",
             "**Intended use:** research use only, not for diagnosis. Trained and tested on *simulated* "
             f"{fam.data_description}; performance on real patients is unknown.", "",
             "## Provenance", "",
             f"- MLflow run: `{cand.run_id}` (cell `{cand.cell}`, seed {cand.seed})",
             f"- Dataset: `{tags.get('dataset')}`, version `{tags.get('dataset_version')}`",
             f"- Validation: **{tags.get('validation')}** (manifest sha256 `{tags.get('validation_manifest_sha256', '')[:16]}…`)",
             f"- Code: git `{tags.get('git_commit')}`; profile `{tags.get('profile')}`",
             f"- Model: {', '.join(f'{k}={v}' for k, v in tags.items() if k.startswith('factor.'))}", "",
             "## Test metrics (this seed)", "", *fam.card(cand), ""]
    if cell_table_row:
        lines += ["## This cell over all seeds (mean ± 95 % CI)", "",
                  " ".join(f"{m.upper()} {100 * cell_table_row[f'{m}_mean']:.1f} ± {100 * cell_table_row[f'{m}_ci95']:.1f} %;"
                           for m in fam.metrics if f"{m}_mean" in cell_table_row), ""]
    lines += ["## Promotion gates", ""] + [f"- {'PASS' if g.passed else 'FAIL'} `{g.name}`: {g.reason}" for g in gates]
    rep = layout.ablation_report_dir(family) / "report.md"
    if rep.exists():
        lines += ["", "## Ablation (from `medops report`)", "", rep.read_text().split("\n", 1)[1]]
    lines += ["", "## Known limitations", "", *(f"- {x}" for x in fam.limitations)]
    cell_figs = layout.cell_dir(family, cand.cell, int(cand.seed)) / "figures"
    figs = sorted((layout.ablation_report_dir(family) / "figures").glob("*.png")) + sorted(cell_figs.glob("*.png"))
    if figs:
        lines += ["", "## Figures", ""] + [f"![{f.stem}](model_card_figures/{f.name})" for f in figs]
    return "\n".join(lines) + "\n"


def _write_local_card(family: str, cand, card: str) -> None:
    """The card beside the decision (``reports/promotion/<family>_model_card.md``, for the summary page),
    its figures linked where they lie in the project instead of in the MLflow run."""
    import os

    path = layout.promotion_file(family).with_name(f"{family}_model_card.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    cell_figs = layout.cell_dir(family, cand.cell, int(cand.seed)) / "figures"
    for f in sorted((layout.ablation_report_dir(family) / "figures").glob("*.png")) + sorted(cell_figs.glob("*.png")):
        card = card.replace(f"](model_card_figures/{f.name})", f"]({os.path.relpath(f, path.parent)})")
    path.write_text(card)


def _candidate(cfg, fam):
    """The best finished cell on the family's own dataset (by the validation selection score)."""
    from medops.experiments.ablation import collect
    from medops.experiments.promotion import select_candidate

    fcfg = cfg.family(fam.name)
    abl = fcfg.ablation
    cells = collect(layout.cells_dir(fam.name), abl, fam.metrics)
    home = fam.default_dataset(fcfg)  # the registered model serves the family's dataset: only its cells compete
    cells = cells[cells.cell.map(lambda c: abl.cell_dataset(c, home) == home)]
    try:
        return select_candidate(cells)
    except ValueError as exc:
        raise MedopsError(f"ablation of {fam.name}", str(exc), "run the ablation (dvc repro) first") from exc


def _log_candidate_model(cfg, fam, cand) -> str:
    from medops.engine import load_checkpoint
    from medops.preprocess import load_index
    from medops.tracking import registry

    fcfg = cfg.family(fam.name)
    abl, cdir = fcfg.ablation, layout.cell_dir(fam.name, cand.cell, int(cand.seed))
    pre = layout.preprocessed_dir(abl.cell_dataset(cand.cell, fam.default_dataset(fcfg)))
    index = load_index(pre)
    net = fam.build_model(fcfg, abl.cell_model(cand.cell, fcfg.model), index, start_weights=False)
    net.load_state_dict(load_checkpoint(cdir / "best.pt")["model"])
    example = np.load(pre / index[index.split == "test"].shard.iloc[0])["image"][None].astype(np.float32)
    return registry.ensure_model_logged(cand.run_id, net.eval(), fam.activation(), example)


def _gates(cfg, fam, cand, tags: dict, champion: str | None):
    from medops.experiments.promotion import evaluate_gates
    from medops.tracking import registry

    pc = cfg.family(fam.name).promote
    cand_cases = pd.read_csv(layout.cell_dir(fam.name, cand.cell, int(cand.seed)) / "per_case.csv")
    champ_cases = None
    if champion is not None:
        champ_run = registry.version_run_id(fam.name, champion)
        with tempfile.TemporaryDirectory(prefix="medops-champ-") as tmp:
            champ_cases = pd.read_csv(registry.download(champ_run, "evaluation/per_case.csv", Path(tmp)))
    conv = None
    if pc.require_converged:
        epochs = int(cand.epochs) if cand.epochs == cand.epochs else "?"
        conv = (bool(cand.converged), f"{cand.cell} seed {int(cand.seed)} " + (
            f"stopped on a plateau after {epochs} epochs" if cand.converged else
            f"ran its whole {epochs}-epoch budget without a plateau (not converged)"))
    return evaluate_gates(validation=tags.get("validation", "unknown"), test_mean=float(cand[f"test_{pc.metric}"]),
                          floor=pc.floor, metric=pc.metric, candidate_cases=cand_cases, champion_cases=champ_cases,
                          alpha=pc.alpha, compare=lambda a, b: fam.compare(a, b, pc.metric), converged=conv,
                          more_floors={m: (float(cand.get(f"test_{m}", float("nan"))), float(fl)) for m, fl in pc.floors.items()})


def _table_row(family: str, cell: str) -> dict | None:
    for f in layout.ablation_report_dir(family).glob("table_*.csv"):
        t = pd.read_csv(f)
        hit = t[t.cell == cell]
        if len(hit):
            return hit.iloc[0].to_dict()
    return None


def _publish_card(fam, version: str, cand, tags: dict, gates) -> None:
    from medops import tracking
    from medops.tracking import registry

    card = _model_card(fam, version, cand, tags, gates, _table_row(fam.name, cand.cell))
    registry.log_text(cand.run_id, card, f"model_card_v{version}.md")
    _write_local_card(fam.name, cand, card)
    for figs in (layout.ablation_report_dir(fam.name) / "figures",
                 layout.cell_dir(fam.name, cand.cell, int(cand.seed)) / "figures"):  # e.g. Grad-CAM panels
        if figs.exists():
            tracking.log_artifacts_to(cand.run_id, figs, "model_card_figures")
    registry.describe_version(fam.name, version, card, full_card=f"model_card_v{version}.md")


def promote(cfg, family: str) -> dict:
    """Register the best ablation cell as `challenger`; move `champion` only when every gate passes."""
    from medops.tracking import registry

    fam = get_family(family, cfg)
    cand = _candidate(cfg, fam)
    tags = registry.run_tags(cand.run_id)
    model_uri = _log_candidate_model(cfg, fam, cand)
    existing = registry.version_for_run(family, cand.run_id)
    champion = registry.alias_version(family, "champion")
    decision = {"family": family, "candidate_cell": cand.cell, "candidate_seed": int(cand.seed),
                "run_id": cand.run_id}
    if existing is not None and champion == str(existing.version):
        decision.update(version=str(existing.version), action="unchanged", champion=champion,
                        reasons=["nothing new: the best cell is already the champion"])
        return _write_decision(family, decision)
    version = str(existing.version if existing is not None else registry.register(family, model_uri, cand.run_id).version)
    if registry.alias_version(family, "challenger") != version:
        registry.set_alias(family, "challenger", version)
    gates = _gates(cfg, fam, cand, tags, champion)
    promoted = all(g.passed for g in gates)
    _publish_card(fam, version, cand, tags, gates)
    registry.tag_version(family, version, {
        "promotion.decision": "promoted" if promoted else "refused",
        "promotion.reasons": "; ".join(g.reason for g in gates if (not g.passed) or promoted),
        **{f"gate.{g.name}": ("pass: " if g.passed else "fail: ") + g.reason for g in gates},
        "cell": cand.cell, "seed": int(cand.seed)})
    if promoted:
        registry.set_alias(family, "champion", version)
        registry.set_champion_history(family, registry.champion_history(family) + [version])
    decision.update(version=version, action="promoted" if promoted else "refused",
                    champion=version if promoted else champion,
                    gates=[{"gate": g.name, "passed": g.passed, "reason": g.reason} for g in gates],
                    reasons=[g.reason for g in gates if not g.passed] or ["all gates passed"])
    return _write_decision(family, decision)


def _write_decision(family: str, decision: dict) -> dict:
    path = layout.promotion_file(family)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(decision, indent=2))
    return decision


def rollback(cfg, family: str) -> dict:
    """Point `champion` back at the previous champion; a clear error (aliases unchanged) when there is none."""
    from medops.tracking import registry

    get_family(family, cfg)
    hist = registry.champion_history(family)
    current = registry.alias_version(family, "champion")
    if len(hist) < 2:
        raise MedopsError(f"registered model '{family}'", "no previous champion to roll back to "
                          f"(champion history: {hist or 'empty'})", "promote another version first; aliases unchanged")
    prev = hist[-2]
    registry.set_alias(family, "champion", prev)
    registry.set_champion_history(family, hist[:-1])
    registry.tag_version(family, current or hist[-1], {"promotion.rolled_back": f"champion moved back to v{prev}"})
    return _write_decision(family, {"family": family, "action": "rolled_back", "from": current, "champion": prev})
