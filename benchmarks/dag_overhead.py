"""Orchestration share of the local smoke DAG run:
(DAG wall time - sum of task durations, i.e. time inside `medops` commands) / DAG wall time."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import copy_project, save


def main() -> dict:
    dst = Path(tempfile.mkdtemp(prefix="medops-dag-")) / "medops"
    copy_project(dst)
    bin_dir = Path(sys.executable).parent
    home = dst.parent / "airflow"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AIRFLOW_HOME": str(home),
           "AIRFLOW__CORE__DAGS_FOLDER": str(dst / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "MEDOPS_BIN": str(bin_dir / "medops"), "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}
    run = lambda cmd: subprocess.run(cmd, cwd=dst, shell=True, check=True, env=env, capture_output=True)  # noqa: E731
    run("git init -q && git add -A && git commit -qm b && medops profile smoke && medops generate breast-trimodal")
    run("airflow db migrate")
    t0 = time.perf_counter()
    run("airflow dags test fusion_seg")
    wall = time.perf_counter() - t0
    with sqlite3.connect(home / "airflow.db") as db:
        tasks = db.execute("SELECT SUM(duration), COUNT(*) FROM task_instance WHERE dag_id='fusion_seg'").fetchone()
        run_s = db.execute("SELECT (julianday(end_date) - julianday(start_date)) * 86400 FROM dag_run "
                           "WHERE dag_id='fusion_seg'").fetchone()[0]
    res = {"profile": "smoke", "tasks": tasks[1], "sum_task_s": round(tasks[0], 1), "dag_run_s": round(run_s, 1),
           "orchestration_share": round((run_s - tasks[0]) / run_s, 3),
           "airflow_dags_test_wall_s": round(wall, 1), "goal": "<= 0.10"}
    save("dag_overhead", res)
    shutil.rmtree(dst.parent, ignore_errors=True)
    return res


if __name__ == "__main__":
    main()
