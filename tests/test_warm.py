"""The warm start of `medops run`: a command run in a fork of the warm server behaves as the same command
run in its own process — output, exit status, working directory, environment, import log — and a
server that cannot be reached, or a client that dies, changes nothing but speed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, edit_params

BIN = Path(sys.executable).parent
LIGHT = ("yaml",)      # the server's preload list is a parameter: these tests need not import torch


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sock = tmp_path_factory.mktemp("w") / "w.sock"
    proc = subprocess.Popen([sys.executable, "-c", f"from medops.warm import serve; serve({str(sock)!r}, "
                             f"preload={LIGHT!r})"], stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if sock.exists():
            break
        time.sleep(0.05)
    assert sock.exists(), proc.stderr.read() if proc.poll() is not None else "server did not start"
    yield sock
    proc.terminate()
    proc.wait(10)


def _medops(args, cwd, **env):
    e = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env}
    return subprocess.run([str(BIN / "medops"), *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path):
    dst = tmp_path / "proj"
    dst.mkdir()
    (dst / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return dst


def test_same_output_and_status_as_a_process_of_its_own(server, project):
    for args in (["families"], ["train", "no_such_family"], ["no-such-verb"]):
        cold = _medops(args, project)
        warm = _medops(args, project, MEDOPS_WARM=str(server), MEDOPS_WARM_PROBE="1")
        assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr), args
    assert _medops(["train", "no_such_family"], project, MEDOPS_WARM=str(server)).returncode == 2


def test_the_child_runs_in_the_clients_folder_with_its_environment(server, project, tmp_path):
    """params.yaml is read from the client's working directory; MEDOPS_IMPORTS_LOG comes from its environment
    and is written at exit (atexit runs in the child), listing the medops modules the command imported."""
    edit_params(project / "params.yaml", lambda p: p["orchestration"].update(families=["fusion_seg"]))
    log = tmp_path / "imports.jsonl"
    warm = _medops(["families"], project, MEDOPS_WARM=str(server), MEDOPS_IMPORTS_LOG=str(log))
    cold = _medops(["families"], project)
    assert warm.returncode == 0 and warm.stdout == cold.stdout
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec["argv"] == ["families"]
    assert any(m.endswith("medops/cli.py") for m in rec["modules"])
    assert not any(m.endswith("medops/warm.py") for m in rec["modules"])   # the server's own code is not counted


def test_a_plugin_family_on_the_clients_pythonpath_is_found(server, project):
    """A family defined outside medops (params `plugins:`) is imported from the client's PYTHONPATH in the
    warm child exactly as in a process of its own."""
    edit_params(project / "params.yaml", lambda p: p.update(plugins=["tiny_family"]))
    cold = _medops(["families"], project, PYTHONPATH=str(ROOT / "tests"))
    warm = _medops(["families"], project, PYTHONPATH=str(ROOT / "tests"), MEDOPS_WARM=str(server),
                   MEDOPS_WARM_PROBE="1")
    assert cold.returncode == 0 and "tiny_blobs" in cold.stdout
    assert (warm.returncode, warm.stdout) == (cold.returncode, cold.stdout)


def test_an_unreachable_server_means_a_cold_run(project, tmp_path):
    cold = _medops(["families"], project)
    for value in (str(tmp_path / "gone.sock"), "0", ""):
        r = _medops(["families"], project, MEDOPS_WARM=value)
        assert (r.returncode, r.stdout) == (cold.returncode, cold.stdout), value


def test_killing_the_client_stops_the_command(server, project, tmp_path):
    """SIGTERM to the client is relayed to the command; `kill -9` cannot be relayed, so the child watches
    its connection and gets SIGTERM when the client is gone: no orphan keeps working."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dvc").write_text('#!/bin/sh\necho $PPID > "$MARKER"\nexec sleep 60\n')   # `medops run` waits on it
    (fake / "dvc").chmod(0o755)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        marker = tmp_path / f"m{int(sig)}"
        env = {**os.environ, "PATH": f"{fake}:{BIN}:{os.environ['PATH']}", "MEDOPS_WARM": str(server),
               "MARKER": str(marker)}
        client = subprocess.Popen([str(BIN / "medops"), "run", "--cold", "--workers", "1", "--family", "fusion_seg"],
                                  cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(400):
            if marker.exists() and marker.read_text().strip():
                break
            time.sleep(0.05)
        child = int(marker.read_text())               # the forked `medops run` (the fake dvc's parent)
        assert child != client.pid
        client.send_signal(sig)
        client.wait(10)
        for _ in range(100):
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the command (pid {child}) outlived its client killed by {sig!r}")
        subprocess.run(["pkill", "-f", "sleep 60"], check=False)


def test_a_lock_released_cleanly_is_not_reported_stale(tmp_path, monkeypatch, capsys):
    """Only a holder that died with the lock is 'stale'; a finished command leaves no note for the next."""
    from medops import locks

    monkeypatch.setattr(locks, "LOCK_DIR", tmp_path / "locks")
    target = tmp_path / "cell"
    with locks.exclusive(target, "a cell"):
        pass
    with locks.exclusive(target, "a cell"):
        pass
    assert "stale lock" not in capsys.readouterr().err
    lock = next((tmp_path / "locks").iterdir())
    lock.write_text(json.dumps({"pid": 2 ** 22 + 7, "host": __import__("socket").gethostname()}))  # died holding it
    with locks.exclusive(target, "a cell"):
        pass
    assert "stale lock" in capsys.readouterr().err


def test_the_server_does_not_outlive_the_process_that_started_it(tmp_path):
    """`medops run` killed outright (SIGKILL) cannot stop its server: the server notices and exits."""
    sock = tmp_path / "s.sock"
    script = tmp_path / "starter.py"
    script.write_text("import subprocess, sys, time\n"
                      f"p = subprocess.Popen([sys.executable, '-c', {f'from medops.warm import serve; serve({str(sock)!r}, preload=())'!r}])\n"
                      "print(p.pid, flush=True)\ntime.sleep(60)\n")
    starter = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    server = int(starter.stdout.readline())
    for _ in range(200):
        if sock.exists():
            break
        time.sleep(0.05)
    starter.kill()
    starter.wait()
    for _ in range(100):
        if not Path(f"/proc/{server}").exists() or "Z" in Path(f"/proc/{server}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        os.kill(server, signal.SIGKILL)
        pytest.fail("the warm server outlived its parent")
    assert not sock.exists()


def test_the_preload_covers_a_tracked_commands_first_mlflow_call(tmp_path):
    """What a training stage imports on its first MLflow call — the SQL store (its SQLAlchemy mappers),
    alembic's schema check, GitPython, the CLI — is already in the warm server: a fork pays for none of it
    (~3 s a stage on 2 cores, benchmarks/warm_start.py). Checked the way a fork sees it: after PRELOAD, the
    same calls as `medops train` import no module of those libraries anew (in a project whose MLflow database
    exists: creating it runs the schema migrations once)."""
    code = f"""
import importlib, json, sys
from medops.warm import PRELOAD
for name in PRELOAD:
    importlib.import_module(name)
before = set(sys.modules)
import medops.cli  # noqa: F401  (the command's own code is imported by the command)
from medops.tracking.mlflow_run import git_commit, run_status, start_or_resume_run
run = start_or_resume_run("fam", "r", tags={{"git_commit": git_commit({str(ROOT)!r})}}, root={str(tmp_path)!r})
import mlflow
mlflow.end_run()
assert run_status(run.info.run_id, {str(tmp_path)!r}) == "FINISHED"
new = sorted(m for m in set(sys.modules) - before
             if m.split(".")[0] in ("alembic", "sqlalchemy", "git", "gitdb", "typer", "mako")
             or m.startswith(("mlflow.store.tracking", "mlflow.store.model_registry", "mlflow.store.db")))
print(json.dumps(new))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    for _ in range(2):      # the first call creates the project's mlflow.db (its migrations run once); the second
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env=env)     # is what every later stage does
        assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [], r.stdout[-2000:]
