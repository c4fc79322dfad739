"""`make run` / `medops run` and the summary page, without training: the family choice, a failed family,
missing figures (the whole page over a real run is checked in a browser in test_pipeline_dvc.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def test_an_unknown_family_is_refused_listing_the_families_and_nothing_runs(tmp_path, smoke_cfg, monkeypatch):
    from medops.errors import MedopsError
    from medops.runs.pipeline import resolve_families

    assert resolve_families(smoke_cfg, "") == smoke_cfg.raw["orchestration"]["families"]
    assert resolve_families(smoke_cfg, "transfer_cls, fusion_seg") == ["transfer_cls", "fusion_seg"]
    with pytest.raises(MedopsError, match=r"no_such_family.*nothing was run.*fusion_seg.*transfer_cls.*nodule3d"):
        resolve_families(smoke_cfg, "fusion_seg,no_such_family")
    # through the CLI, from a folder with the project's params: exit 2, nothing written
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    r = subprocess.run([str(Path(sys.executable).parent / "medops"), "run", "--family", "no_such_family"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown model family" in r.stderr and "fusion_seg" in r.stderr
    assert not (tmp_path / "reports").exists()
    # make passes FAMILY through to the same verb
    dry = subprocess.run(["make", "-n", "run", "FAMILY=no_such_family"], cwd=ROOT, capture_output=True, text=True)
    assert '--family "no_such_family"' in dry.stdout


def test_every_family_has_run_targets_that_are_dvc_stages(smoke_cfg):
    from dvc_deps import stage_specs

    from medops.runs.pipeline import targets_of

    stages = stage_specs(ROOT)
    for fam, targets in targets_of(smoke_cfg, smoke_cfg.raw["orchestration"]["families"]).items():
        assert targets and all(t in stages for t in targets), (fam, targets)


def test_no_stage_depends_on_a_folder_holding_a_pipeline_file():
    """A family's dvc.yaml (and the dvc.lock DVC writes beside it after every stage) lives in its package, so a
    stage that depended on that package folder as a whole would change its own dependency each time it ran and
    never be up to date: such deps must name the package's files."""
    from dvc_deps import pipeline_files, stage_specs

    homes = {f.parent.relative_to(ROOT).as_posix() for f in pipeline_files(ROOT) if f.parent != ROOT}
    assert homes, "each family but the first keeps its stages in src/medops/families/<family>/dvc.yaml"
    bad = [(name, d) for name, st in stage_specs(ROOT).items() for d in st.get("deps", [])
           if any(h == d.rstrip("/") or h.startswith(d.rstrip("/") + "/") for h in homes)
           and not st.get("always_changed")]
    assert bad == []


def test_a_failed_family_is_reported_with_its_reason_and_the_others_still_run(tmp_path, smoke_cfg, monkeypatch):
    """`dvc` stand-in: one family's stages fail, the other's succeed; both are reported, the page says why."""
    import dataclasses

    from medops.runs.pipeline import run_families

    fake = tmp_path / "dvc"
    fake.write_text("#!/bin/sh\nif [ \"$2\" = broken_stage ]; then echo 'ERROR: failed to reproduce broken_stage: "
                    "disk full'; exit 255; fi\necho ok\n")
    fake.chmod(0o755)
    raw = json.loads(json.dumps(smoke_cfg.raw))
    raw["orchestration"]["run_targets"] = {"fusion_seg": ["evaluate"], "transfer_cls": ["broken_stage"]}
    cfg = dataclasses.replace(smoke_cfg, raw=raw)
    monkeypatch.chdir(tmp_path)
    out = []
    res = run_families(cfg, ["transfer_cls", "fusion_seg"], echo=lambda *a, **k: out.append(" ".join(map(str, a))),
                       dvc=str(fake), workers=1)
    assert res["families"]["transfer_cls"]["status"] == "failed"
    assert "disk full" in res["families"]["transfer_cls"]["reason"]
    assert res["families"]["fusion_seg"]["status"] == "ok"
    text = "\n".join(out)
    assert "FAILED: ERROR: failed to reproduce broken_stage" in text and "total" in text
    run = json.loads((tmp_path / "reports/run.json").read_text())
    assert run["families"].keys() == {"transfer_cls", "fusion_seg"}
    m = run["machine"]            # wall times are recorded with how fast the machine was
    assert m["threads"] >= 1 and m["matmul_gflops_fp32"] > 0 and 0 < m["reference_conv_step_s"] < 60
    assert f"reference conv training step {m['reference_conv_step_s']} s" in text
    page = (tmp_path / "reports/index.html").read_text()
    assert "FAILED after" in page and "disk full" in page and 'id="fusion_seg"' in page and 'id="nodule3d"' in page
    assert f"reference conv\n  training step took {m['reference_conv_step_s']} s" in page


def test_a_missing_figure_is_named_on_the_page_not_shown_broken(tmp_path):
    from medops.runs.summary import render_markdown

    rep = tmp_path / "reports/ablation/fam"
    (rep / "figures").mkdir(parents=True)
    (rep / "figures/bars.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (rep / "report.md").write_text("# Report\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![bars](figures/bars.png)\n\n"
                                   "![curves](figures/curves.png)\n")
    html, missing = render_markdown(rep / "report.md", tmp_path / "reports", "`medops report fam` draws it")
    assert "<table>" in html and 'src="ablation/fam/figures/bars.png"' in html
    assert missing == [str(rep / "figures/curves.png")]
    assert "missing: " in html and "curves.png" in html and "<img src=\"ablation/fam/figures/curves.png\"" not in html


def test_an_ablation_stage_says_its_place_and_the_time_left(tmp_path, smoke_cfg, monkeypatch):
    """Each cell's stage prints `[family] ablation i/N: cell, seed s` and, once runs have finished, the time
    left estimated from their mean wall time."""
    import os
    from types import SimpleNamespace

    from medops import layout
    from medops.runs.train import _position

    monkeypatch.chdir(tmp_path)
    fcfg = smoke_cfg.family("fusion_seg")
    abl = fcfg.ablation
    cells, seeds = list(abl.cells), list(abl.seeds)
    n = len(cells) * len(seeds)
    p = SimpleNamespace(kind=cells[1], dataset="breast-trimodal")
    assert _position("fusion_seg", fcfg, p, cells[1], seeds[0]) == f"[fusion_seg] ablation 1/{n}: {cells[1]}, seed {seeds[0]}"
    for s, w in zip(seeds[:2], (30.0, 90.0)):
        d = layout.cell_dir("fusion_seg", cells[0], s)
        d.mkdir(parents=True)
        (d / "status.json").write_text(json.dumps({"status": "finished", "wall_s": w}))
    line = _position("fusion_seg", fcfg, p, cells[1], seeds[0])
    left = (n - 2) * 60 / 60
    assert line == f"[fusion_seg] ablation 3/{n}: {cells[1]}, seed {seeds[0]}; about {left:.0f} min left (60 s per run so far)"
    # `medops run` running two stages side by side: two runs finish per run's time
    monkeypatch.setenv("MEDOPS_PARALLEL_STAGES", "2")
    line = _position("fusion_seg", fcfg, p, cells[1], seeds[0])
    assert line.endswith(f"about {left / 2:.0f} min left (30 s per run so far, 2 at a time)"), line
    # side by side, runs finish two at a time: 8 s apart, then 150 s later the next two - 75 s a run, not 8
    more = [(c, s) for c in cells[2:] for s in seeds][:4]
    for (c, s), t in zip([(cells[0], seeds[0]), (cells[0], seeds[1])] + more, (0, 8, 150, 158, 300, 308)):
        d = layout.cell_dir("fusion_seg", c, s)
        d.mkdir(parents=True, exist_ok=True)
        (d / "status.json").write_text(json.dumps({"status": "finished", "wall_s": 150.0}))
        os.utime(d / "status.json", (1000.0 + t, 1000.0 + t))
    line = _position("fusion_seg", fcfg, p, cells[1], seeds[0])
    assert line.endswith(f"about {(n - 6) * 75 / 60:.0f} min left (75 s per run so far, 2 at a time)"), line
    for c, s in more:
        (layout.cell_dir("fusion_seg", c, s) / "status.json").unlink()
    monkeypatch.delenv("MEDOPS_PARALLEL_STAGES")
    # with three runs done, the median time between their ends (DVC's work between stages included; a pause
    # of a day between two of them ignored) replaces the runs' own clocks
    d = layout.cell_dir("fusion_seg", cells[0], seeds[2])
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"status": "finished", "wall_s": 10.0}))
    for s, t in zip(seeds[:3], (1000.0, 1100.0, 1000.0 + 86400)):
        os.utime(layout.cell_dir("fusion_seg", cells[0], s) / "status.json", (t, t))
    line = _position("fusion_seg", fcfg, p, cells[1], seeds[0])
    assert line.endswith(f"about {(n - 3) * 100 / 60:.0f} min left (100 s per run so far)"), line
    assert _position("fusion_seg", fcfg, SimpleNamespace(kind="main", dataset="breast-trimodal"), None, None) == \
        "[fusion_seg] train the main model on breast-trimodal"


def test_each_stage_says_which_family_and_step_it_is(tmp_path):
    """A DVC stage's first line names the family (found from the dataset for data stages) and the step."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    medops = str(Path(sys.executable).parent / "medops")
    r = subprocess.run([medops, "preprocess", "--dataset", "lidc-sim"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.splitlines()[0] == "[nodule3d] preprocess lidc-sim"
    r = subprocess.run([medops, "evaluate", "fusion_seg"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.splitlines()[0] == "[fusion_seg] evaluate the main model on the test split"


def test_the_page_shows_the_champion_card_without_repeating_the_ablation(tmp_path, smoke_cfg, monkeypatch):
    from medops.runs.summary import write_summary

    monkeypatch.chdir(tmp_path)
    promo = tmp_path / "reports/promotion"
    promo.mkdir(parents=True)
    (promo / "fusion_seg.json").write_text(json.dumps({"family": "fusion_seg", "action": "promoted", "version": "2",
                                                       "champion": "2", "candidate_cell": "tri_attention",
                                                       "candidate_seed": 1, "reasons": ["all gates passed"]}))
    (promo / "fusion_seg_model_card.md").write_text(
        "# Model card — fusion_seg version 2\n\n## Promotion gates\n\n- PASS `floor`: 0.9 >= 0.6\n\n"
        "## Ablation (from `medops report`)\n\n## Uni- vs bi- vs tri-modal\n\n| a |\n|---|\n| 1 |\n\n"
        "## Known limitations\n\n- simulated data\n\n## Figures\n\n![bars](../ablation/fusion_seg/figures/bars.png)\n")
    page = write_summary(smoke_cfg).read_text()
    card = page[page.index("<summary>model card</summary>"):]
    assert "Promotion gates" in card and "simulated data" in card and "Uni- vs bi- vs tri-modal" not in card
    assert "missing: reports/ablation/fusion_seg/figures/bars.png" in card
    assert "Champion: <b>v2</b>" in page and "not run yet" in page        # the other families: nothing yet


PAR_DVC = """stages:
  prep:
    cmd: mkdir -p data && echo x > data/x.txt
    outs:
      - data/x.txt
  abl:
    matrix:
      cell: [a, b, c]
      seed: [1, 2]
    cmd: sh run.sh ${item.cell} ${item.seed}
    deps:
      - data/x.txt
      - run.sh
    outs:
      - out/${item.cell}-${item.seed}
  train:
    cmd: sh run.sh main 0
    deps:
      - data/x.txt
      - run.sh
    outs:
      - out/main-0
  report:
    cmd: ls out > report.txt
    deps:
      - out
    outs:
      - report.txt
"""


def _dvc_project(tmp_path, script: str) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=proj, check=True)
    (proj / "dvc.yaml").write_text(PAR_DVC)
    (proj / "run.sh").write_text(script)
    return proj


@pytest.mark.parametrize("fail", [False, True])
def test_an_ablations_stages_run_several_at_a_time_with_the_same_result_and_a_failure_stops_the_family(
        tmp_path, smoke_cfg, monkeypatch, fail):
    """`orchestration.local_workers: 2`: the stages the group needs first, then the group's stages two at a
    time (each told its share of the cores), then the targets — every stage recorded in dvc.lock, nothing left
    to reproduce. A stage that fails stops the family before its report, with DVC's reason."""
    import dataclasses

    from medops.runs.pipeline import _threads_each, plan_group, run_families

    script = ('mkdir -p out/$1-$2 && date +%s.%N > out/$1-$2/start && echo "$MEDOPS_TORCH_THREADS" > out/$1-$2/threads'
              ' && sleep 1 && date +%s.%N > out/$1-$2/end\n')
    if fail:
        script = 'if [ "$1-$2" = b-1 ]; then echo "ERROR: cell b seed 1: out of memory" >&2; exit 3; fi\n' + script
    proj = _dvc_project(tmp_path, script)
    raw = json.loads(json.dumps(smoke_cfg.raw))
    raw["orchestration"].update(run_targets={"fusion_seg": ["report"]}, parallel_stages={"fusion_seg": "abl"})
    cfg = dataclasses.replace(smoke_cfg, raw=raw)
    monkeypatch.chdir(proj)
    before, members, side = plan_group("abl", ["report"])
    assert before == ["prep"] and sorted(members) == [f"abl@{c}-{s}" for c in "abc" for s in (1, 2)]
    assert side == ["train"]                                    # the main model: beside the ablation
    out = []
    dvc = str(Path(sys.executable).parent / "dvc")
    res = run_families(cfg, ["fusion_seg"], echo=lambda *a, **k: out.append(" ".join(map(str, a))), dvc=dvc,
                       workers=2)
    rec = res["families"]["fusion_seg"]
    if fail:
        assert rec["status"] == "failed" and "out of memory" in "".join(out)
        assert "failed to reproduce" in rec["reason"] and "abl@b-1" in rec["reason"]
        assert not (proj / "report.txt").exists()
        return
    assert rec["status"] == "ok", (rec, "".join(out)[-3000:])
    runs = sorted(d for d in (proj / "out").iterdir() if d.is_dir())
    assert len(runs) == 7 and (proj / "report.txt").read_text().split() == [r.name for r in runs]
    assert {(r / "threads").read_text().strip() for r in runs} == {str(_threads_each(2))}
    span = {r.name: (float((r / "start").read_text()), float((r / "end").read_text())) for r in runs}
    spans = sorted(span.values())
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))          # two stages ran at the same time
    main = span.pop("main-0")
    assert main <= spans[1]                                # the main model was one of the first two ...
    assert sum(s[0] < main[1] for s in span.values()) >= 1           # ... with the ablation beside it
    status = subprocess.run([dvc, "status"], cwd=proj, capture_output=True, text=True)
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout
    lock = (proj / "dvc.lock").read_text()
    assert all(f"abl@{c}-{s}:" in lock for c in "abc" for s in (1, 2)) and "train:" in lock
    assert "6 stages of abl 2 at a time" in "".join(out) and "beside them train" in "".join(out)
    ph = json.loads((proj / "reports/run.json").read_text())["families"]["fusion_seg"]["phases"]
    assert set(ph) == {"before_group_s", "group_s", "beside_group_s", "after_group_s"}  # where the time went
    assert ph["beside_group_s"] >= 1
    assert ph["group_s"] >= 3 and ph["before_group_s"] < ph["group_s"]      # six 1-s stages, two at a time


def test_the_pool_runs_one_of_each_cell_first_then_the_dearest_cells_first(tmp_path):
    """Longest first, measured as it goes: once each cell has run once, the queue starts the cell that took
    longest, so a dear cell is not left for the end with the other worker idle (a fresh clone has no earlier
    times to go by). The order of stages a family lists does not matter."""
    import io

    from medops.runs.pipeline import _Out, _kind, _pool

    assert _kind("x/dvc.yaml:abl@rating3_benign-4") == "x/dvc.yaml:abl@rating3_benign" and _kind("prep") == "prep"
    secs = {"cheap": 0.0, "dear": 0.6, "middle": 0.3}
    order = tmp_path / "order"
    stages = [f"abl@{c}-{s}" for c in ("cheap", "middle", "dear") for s in (1, 2, 3)]
    cmds = [["sh", "-c", f"echo {st} >> {order}; sleep {secs[st[4:].rsplit('-', 1)[0]]}"] for st in stages]
    rc = _pool(cmds, 1, None, _Out(lambda *a, **k: None, io.StringIO(), []), [_kind(st) for st in stages])
    ran = order.read_text().split()
    assert rc == 0 and sorted(ran) == sorted(stages)
    assert [_kind(s) for s in ran] == ["abl@cheap", "abl@middle", "abl@dear"] + ["abl@dear"] * 2 + \
        ["abl@middle"] * 2 + ["abl@cheap"] * 2


def test_a_bad_workers_setting_is_refused_naming_it(smoke_cfg):
    import dataclasses

    from medops.errors import ConfigError
    from medops.runs.pipeline import parallel_settings

    assert parallel_settings(smoke_cfg)[0] == smoke_cfg.raw["orchestration"]["local_workers"]
    assert parallel_settings(smoke_cfg, 1)[0] == 1
    raw = json.loads(json.dumps(smoke_cfg.raw))
    raw["orchestration"]["local_workers"] = 0
    with pytest.raises(ConfigError, match=r"orchestration.local_workers.*\[1, 64\]"):
        parallel_settings(dataclasses.replace(smoke_cfg, raw=raw))


def test_every_familys_parallel_group_is_a_matrix_stage_of_its_run(smoke_cfg):
    """The group `medops run` reproduces several at a time is each family's ablation: a DVC matrix stage."""
    from dvc_deps import stage_specs

    groups = smoke_cfg.raw["orchestration"]["parallel_stages"]
    assert set(groups) == set(smoke_cfg.raw["orchestration"]["families"])
    stages = stage_specs(ROOT)
    for fam, group in groups.items():
        assert group in stages and "matrix" in stages[group], (fam, group)


def test_runs_started_at_the_same_moment_on_a_fresh_store_share_one_experiment(tmp_path, monkeypatch):
    """What two ablation stages at once meet: the runner creates a fresh store's tables first, then two
    processes that both find no experiment and create it get the same one (neither fails)."""
    import os

    from medops.tracking.mlflow_run import prepare_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)      # the project's own sqlite store
    prepare_store(tmp_path)
    assert (tmp_path / "mlflow.db").stat().st_size > 0
    code = ("import sys, mlflow; from pathlib import Path; from medops.tracking.mlflow_run import _experiment_id, "
            "tracking_uri; mlflow.set_tracking_uri(tracking_uri(sys.argv[1])); "
            "print(_experiment_id(mlflow, 'cells', Path(sys.argv[1])))")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-500:] for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 1
