"""Two stages at once or one after the other? On this CPU, for each family's quick model: one optimiser step
with all cores (as one stage at a time trains), and the same step in two processes at once with half the
cores each (as `medops run` with ``orchestration.local_workers: 2`` trains two ablation stages) — throughput
ratio = 2 x (time of one all-core step) / (time of a step while the other process steps too).

    python benchmarks/parallel_stages.py [quick|smoke] [steps]     # writes results/parallel_stages_<profile>.json

The whole effect on a family (DVC's bookkeeping of one stage overlapping the other's training as well) is in
the README's wall times of `medops run`."""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time

from _common import ROOT, save


def _steps(name: str, profile: str, threads: int, n: int, q=None) -> float:
    import torch

    torch.set_num_threads(threads)
    from cpu_layout import stepper, workloads
    from medops.config import load_config

    make, batch_of, loss_of = workloads(load_config(ROOT / "params.yaml", profile=profile))[name]
    step = stepper(make, batch_of, loss_of, True)
    step()
    t = time.perf_counter()
    for _ in range(n):
        step()
    dt = (time.perf_counter() - t) / n
    if q is not None:
        q.put(dt)
    return dt


def main(profile: str = "quick", steps: int = 4) -> dict:
    from cpu_layout import workloads
    from medops.config import load_config

    cores = len(os.sched_getaffinity(0))
    half = max(1, cores // 2)
    ctx = mp.get_context("spawn")
    res = {"profile": profile, "cores": cores, "steps": steps, "rows": []}
    for name in workloads(load_config(ROOT / "params.yaml", profile=profile)):
        one = _steps(name, profile, cores, steps)
        q = ctx.Queue()
        ps = [ctx.Process(target=_steps, args=(name, profile, half, steps, q)) for _ in range(2)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        both = statistics.mean([q.get(), q.get()])
        row = {"model": name, "one_stage_all_cores_s": round(one, 3), "two_stages_each_s": round(both, 3),
               "throughput_ratio": round(2 * one / both, 2)}
        print(row, flush=True)
        res["rows"].append(row)
    save(f"parallel_stages_{profile}", res)
    return res


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick", int(sys.argv[2]) if len(sys.argv) > 2 else 4)
