"""`medops run` (what `make run` calls): each family's DVC stages with `dvc repro`, one family after the
other, its output streamed and kept in ``reports/run/<family>.log``; then every family's results on the
terminal in the order they ran, the time of each and in all, and the summary page ``reports/index.html``.
A family whose stages fail is reported with its reason and the others still run; the exit status says
whether all of them succeeded. Which stages make up a family's run is data: ``orchestration.run_targets``.

**Stages at once** (``orchestration.local_workers``, ``medops run --workers N``). DVC reproduces one stage at a
time, but an ablation's stages (``orchestration.parallel_stages``: a matrix stage) are independent of one
another. With N > 1 a family runs in three steps: ``dvc repro`` of the stages the group needs (read from DVC's
own graph), the group's stages N at a time (``dvc --wait-for-lock repro --single-item``: DVC releases its repo
lock while a stage's command runs, and takes it again to record the stage in ``dvc.lock``) — beside them, as
one more job started first, the stages the targets need that are independent of the group (the main model's
training and evaluation: ``plan_group``) —, then ``dvc repro`` of the family's targets, which finds all of
those up to date and runs what needs the group (the ablation's report, the promotion). Each of the N commands
gets ``MEDOPS_TORCH_THREADS`` = cores / N: on 2 cores two one-thread trainings do more work per second than one
two-thread training, and one's DVC bookkeeping overlaps the other's training (``benchmarks/parallel_stages.py``).
The result — the stages run, ``dvc.lock``, runs and models — is the same as with N = 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from medops.errors import ConfigError, MedopsError
from medops.runs.summary import REPORTS, RUN_FILE, show_text, write_summary


def known_families(cfg) -> list[str]:
    return list((cfg.raw.get("orchestration", {}) or {}).get("families", []))


def resolve_families(cfg, spec: str | None) -> list[str]:
    """``FAMILY=a,b`` -> ``[a, b]`` (every family when empty); an unknown name fails before anything runs."""
    known = known_families(cfg)
    if not spec or not spec.strip():
        return known
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise MedopsError(f"FAMILY={spec}", f"unknown model family {unknown}; nothing was run",
                          f"use one or several of {known}, comma-separated (e.g. make run FAMILY={known[0]})")
    return list(dict.fromkeys(names))


def targets_of(cfg, families: list[str]) -> dict[str, list[str]]:
    table = (cfg.raw.get("orchestration", {}) or {}).get("run_targets", {}) or {}
    missing = [f for f in families if not table.get(f)]
    if missing:
        raise ConfigError(f"params.yaml:orchestration.run_targets.{missing[0]}", "no DVC stages listed for this family",
                          "list the stages `make run` reproduces for it, e.g. [<family>_evaluate, <family>_promote]")
    return {f: [str(t) for t in table[f]] for f in families}


def parallel_settings(cfg, workers: int | None = None) -> tuple[int, dict[str, str]]:
    """(stages at once, family -> its parallel group) from ``orchestration``; ``workers`` overrides the first."""
    orch = cfg.raw.get("orchestration", {}) or {}
    n = orch.get("local_workers", 1) if workers is None else workers
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 64:
        raise ConfigError("params.yaml:orchestration.local_workers" if workers is None else "--workers",
                          f"{n!r} is not a number of stages at once in [1, 64]",
                          "use 1 (one stage at a time) up to the number of CPU cores (or GPUs x cells_per_gpu)")
    groups = orch.get("parallel_stages", {}) or {}
    return n, {str(k): str(v) for k, v in groups.items()}


def plan_group(group: str, targets: list[str] = (), root: str | Path = ".") -> tuple[list[str], list[str], list[str]]:
    """From DVC's graph (one read of it): the stages ``group``'s stages depend on, outside the group; the group's
    stages; and the stages the family's ``targets`` need that neither need the group nor are needed by it (the
    main model's training and evaluation, run beside the ablation), in an order DVC can run them."""
    import networkx as nx
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            graph = repo.index.graph                 # an edge runs from a stage to a stage it depends on
            members = list(repo.stage.collect(group))
            upstream = {u for st in members for u in graph.successors(st)} - set(members)
            try:
                wanted = {st for t in targets for st in repo.stage.collect(t)}
            except Exception as exc:   # noqa: BLE001 - DVC's own error, named with the setting that led to it
                raise ConfigError("params.yaml:orchestration.run_targets", f"{list(targets)!r}: {exc}",
                                  "list DVC stages of the family's dvc.yaml (e.g. <path>/dvc.yaml:<stage>)") from exc
            done = upstream.union(*(nx.descendants(graph, u) for u in upstream))
            needs_group = set().union(*(nx.ancestors(graph, m) for m in members))
            wanted |= set().union(*(nx.descendants(graph, st) for st in wanted))
            side = wanted - done - set(members) - needs_group
            return (sorted(u.addressing for u in upstream), [st.addressing for st in members],
                    [st.addressing for st in reversed(list(nx.topological_sort(graph.subgraph(side))))])
    except ConfigError:
        raise
    except Exception as exc:   # noqa: BLE001 - DVC's own error, named with the setting that led to it
        raise ConfigError("params.yaml:orchestration.parallel_stages", f"{group!r}: {exc}",
                          "name a matrix stage of the family's dvc.yaml (e.g. <path>/dvc.yaml:<stage>)") from exc


def _threads_each(workers: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // workers)


def _reason(lines: list[str], rc: int) -> str:
    for line in reversed(lines):
        s = line.strip()
        if s.startswith(("error:", "ERROR:", "ERROR ")) or "Error:" in s:
            return s[:500]
    return f"dvc repro exited with status {rc}"


def machine_reference(reps: int = 3) -> dict:
    """How fast this machine is now, in a few seconds: torch's threads, an fp32 matmul rate and one training
    step of a fixed small conv net (torchvision ResNet-18, 16 x 3 x 64², channels-last, Adam). The same
    2-core machine type has run conv training 3-4x slower on one day than on another (README), so a run's
    wall times are recorded with this reference and compared only between runs with similar references."""
    import torch
    import torchvision

    threads = torch.get_num_threads()
    a, b = torch.rand(1024, 1024), torch.rand(1024, 1024)
    a @ b
    t = time.perf_counter()
    for _ in range(reps * 4):
        a @ b
    gflops = 2 * 1024 ** 3 * reps * 4 / (time.perf_counter() - t) / 1e9
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.resnet18(num_classes=2).to(memory_format=torch.channels_last)
    x = torch.rand(16, 3, 64, 64, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.arange(16) % 2
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    steps = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append(time.perf_counter() - t)
    steps = sorted(steps[1:])
    return {"threads": threads, "matmul_gflops_fp32": round(gflops, 1),
            "reference_conv_step_s": round(steps[len(steps) // 2], 3),
            "reference": "torchvision resnet18, 16x3x64x64, channels-last, fp32, Adam: median of "
                         f"{reps} steps after one warm-up"}


def run_families(cfg, families: list[str], *, echo=print, dvc: str = "dvc", warm: bool = False,
                 workers: int | None = None) -> dict:
    """Reproduce each family's stages; returns (and writes to ``reports/run.json``) status and time per family.
    ``warm``: the stages' medops commands run in forks of one warm server (medops.warm); ``workers``: stages of
    a family's parallel group at once (default ``orchestration.local_workers``)."""
    targets = targets_of(cfg, families)
    workers, groups = parallel_settings(cfg, workers)
    if warm:
        from medops.warm import WarmServer

        with WarmServer() as env:
            echo("warm start: " + ("on (stages fork a process with torch, MONAI and MLflow imported)"
                                   if env.get("MEDOPS_WARM", "0") != "0" else "unavailable, stages run cold"),
                 flush=True)
            return _run_families(cfg, families, targets, echo, dvc, {**os.environ, **env}, workers, groups)
    return _run_families(cfg, families, targets, echo, dvc, None, workers, groups)


class _Out:
    """Where a family's output goes: the terminal, its log, and the last 200 lines (for the failure reason);
    callable from several threads (one line at a time)."""

    def __init__(self, echo, log, lines: list[str]):
        self.echo, self.log, self.lines, self.lock = echo, log, lines, threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            self.echo(line, end="", flush=True)
            self.log.write(line)
            self.lines.append(line)
            del self.lines[:-200]


def _stream(cmd: list[str], env, out: _Out) -> int:
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env) as p:
        for line in p.stdout:
            out(line)
    return p.returncode


def _kind(stage: str) -> str:
    """The cell a matrix stage runs: its name without the last matrix value (``abl@late-2`` -> ``abl@late``;
    every family's ablation matrix is cell x seed). Only the order of the runs depends on it."""
    return stage.rsplit("-", 1)[0] if "@" in stage else stage


def _next(todo: list[tuple[str, list[str]]], cost: dict[str, float]) -> int:
    """Which queued stage starts next: the first whose kind has not run yet (so each kind's cost is measured
    early), else one of the kind that has taken longest so far (longest first: no dear run is left for the
    end with the other worker idle). Ties keep the stages' order."""
    for i, (kind, _) in enumerate(todo):
        if kind not in cost:
            return i
    return max(range(len(todo)), key=lambda i: (cost[todo[i][0]], -i))


def _pool(cmds: list, workers: int, env, out: _Out, kinds: list[str] | None = None,
          cost: dict[str, float] | None = None) -> int:
    """Run ``cmds`` ``workers`` at a time, in the order of ``_next`` over their ``kinds`` (default: all one
    kind, in order); a tuple of commands is one job, run one after the other until one fails. After a failure
    no new job starts (those running finish). Returns the first non-zero exit status, else 0; ``cost`` gets
    each kind's longest time."""
    todo = list(zip(kinds or [""] * len(cmds), cmds))
    cost = {} if cost is None else cost
    failed, lock = [], threading.Lock()

    def worker():
        while True:
            with lock:
                if failed or not todo:
                    return
                kind, cmd = todo.pop(_next(todo, cost))
                cost.setdefault(kind, 0.0)     # started: its cost is being measured
            t0, rc = time.perf_counter(), 0
            for c in cmd if isinstance(cmd, tuple) else (cmd,):
                rc = rc or _stream(c, env, out)
            with lock:
                cost[kind] = max(cost[kind], time.perf_counter() - t0)
                if rc:
                    failed.append(rc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(workers, len(cmds)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed[0] if failed else 0


def _run_family(fam: str, targets: list[str], group: str | None, workers: int, dvc: str, env, out: _Out,
                phases: dict | None = None) -> int:
    """``dvc repro`` of one family's targets; with a parallel ``group``: first the stages the group needs, then
    the group's stages ``workers`` at a time (each with its share of the cores) with the stages independent of
    the group beside them, then the targets. ``phases`` gets the seconds of each of the three steps
    (``before_group_s``, ``group_s``, ``after_group_s``) and of the stages beside the group (``beside_group_s``)."""
    phases = {} if phases is None else phases
    if not group:
        return _stream([dvc, "repro", *targets], env, out)
    try:
        before, members, side = plan_group(group, targets)
    except ConfigError as exc:
        out(f"error: {exc}\n")
        return 2
    threads = _threads_each(workers)
    out(f"[{fam}] {len(members)} stages of {group} {workers} at a time ({threads} torch thread(s) each), "
        f"after {len(before)} they need" + (f"; beside them {', '.join(side)}" if side else "") + "\n")
    t0 = time.perf_counter()
    rc = _stream([dvc, "repro", *before], env, out) if before else 0
    phases["before_group_s"] = round(time.perf_counter() - t0, 1)
    if rc:
        return rc
    from medops.tracking.mlflow_run import prepare_store

    t0 = time.perf_counter()
    prepare_store()                         # a fresh store's tables, before two runs create them at once
    # the stages beside the group (the main model) are one job, started first: the longest one
    jobs = ([tuple([dvc, "--wait-for-lock", "repro", "--single-item", st] for st in side)] if side else []) + \
        [[dvc, "--wait-for-lock", "repro", "--single-item", st] for st in members]
    cost: dict[str, float] = {}
    rc = _pool(jobs, workers, {**(env or os.environ), "MEDOPS_TORCH_THREADS": str(threads),
                               "MEDOPS_PARALLEL_STAGES": str(workers)},
               out, (["beside"] if side else []) + [_kind(st) for st in members], cost)
    phases["group_s"] = round(time.perf_counter() - t0, 1)
    if "beside" in cost:
        phases["beside_group_s"] = round(cost["beside"], 1)
    if rc:
        return rc
    t0 = time.perf_counter()
    rc = _stream([dvc, "repro", *targets], env, out)
    phases["after_group_s"] = round(time.perf_counter() - t0, 1)
    return rc


def _run_families(cfg, families, targets, echo, dvc, env, workers: int = 1, groups: dict | None = None) -> dict:
    groups = groups or {}
    logs = REPORTS / "run"
    logs.mkdir(parents=True, exist_ok=True)
    run = {"profile": cfg.profile, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_reference(), "families": {}}
    m = run["machine"]
    echo(f"machine: {m['threads']} torch threads, fp32 matmul {m['matmul_gflops_fp32']} GFLOP/s, reference conv "
         f"training step {m['reference_conv_step_s']} s (wall times compare between runs with similar numbers)",
         flush=True)
    t_all = time.perf_counter()
    for i, fam in enumerate(families, 1):
        echo(f"\n===== [{fam}] {i}/{len(families)}: dvc repro {' '.join(targets[fam])}", flush=True)
        log_file = logs / f"{fam}.log"
        t0 = time.perf_counter()
        lines: list[str] = []
        phases: dict = {}
        with open(log_file, "w") as log:
            out = _Out(echo, log, lines)
            rc = _run_family(fam, targets[fam], groups.get(fam) if workers > 1 else None, workers, dvc, env, out,
                             phases)
        rec = {"status": "ok" if rc == 0 else "failed", "wall_s": round(time.perf_counter() - t0, 1),
               "targets": targets[fam], "log_file": str(log_file), **({"phases": phases} if phases else {})}
        if rc:
            rec.update(reason=_reason(lines, rc), log="".join(lines[-40:]))
        run["families"][fam] = rec
        run["total_s"] = round(time.perf_counter() - t_all, 1)
        RUN_FILE.write_text(json.dumps(run, indent=2))       # the page reflects a run still going
    for fam, rec in run["families"].items():
        echo(f"\n===== {fam}: {rec['status']} in {rec['wall_s'] / 60:.1f} min", flush=True)
        if rec["status"] != "ok":
            echo(f"FAILED: {rec['reason']} (log: {rec['log_file']})")
            continue
        try:
            echo(show_text(cfg, fam))
        except MedopsError as exc:
            echo(f"no results to show: {exc}")
    page = write_summary(cfg)
    echo("\n===== wall time (profile " + cfg.profile + ")")
    for fam, rec in run["families"].items():
        echo(f"  {fam:<14} {rec['wall_s'] / 60:6.1f} min  {rec['status']}")
    echo(f"  {'total':<14} {run['total_s'] / 60:6.1f} min   (machine: reference conv step "
         f"{m['reference_conv_step_s']} s, matmul {m['matmul_gflops_fp32']} GFLOP/s)")
    echo(f"summary page: {Path(page).resolve()}  (open it in a browser)")
    return run
