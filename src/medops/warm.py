"""Warm process start for local runs.

Every DVC stage is a fresh ``medops`` process, and on a 2-core machine importing torch, torchvision,
MONAI and MLflow costs about 15 s before any work starts: an ablation of 60 (cell, fold) runs spends a
quarter of an hour importing. ``medops run`` therefore starts one *warm server* that has imported those
libraries (and nothing of medops, nor any state: no tracking client, no config, no torch thread pool) and
passes its socket to ``dvc repro`` in ``MEDOPS_WARM``. A ``medops`` command that finds the variable hands
its argv, working directory, environment and standard streams (file descriptors, over the Unix socket) to
the server, which forks a child that runs the command exactly as the process would have run it and
reports its exit status. Ctrl-C / SIGTERM on the client reach the child. If the server cannot be reached
the command runs in its own process as before, so the variable only ever changes speed.

The same pattern as a zygote / ``multiprocessing``'s forkserver / gunicorn's ``--preload``.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

ENV = "MEDOPS_WARM"
# third-party libraries only: the medops modules a command imports must still be imported by that command
# (the DVC dependency check reads them from sys.modules)
LIBRARIES = ("numpy", "pandas", "pyarrow.parquet", "scipy.ndimage", "scipy.stats", "PIL.Image", "yaml",
             "torch", "torchvision", "monai", "mlflow", "mlflow.pytorch", "torchmetrics", "safetensors.torch",
             "matplotlib", "pydicom", "SimpleITK", "skimage", "tqdm", "sklearn.metrics", "psutil")
# what every tracked command imports next, on its first MLflow call: the SQL stores (SQLAlchemy's mappers are
# configured on import), alembic's schema check, GitPython for the run's commit tag, the figures' backend,
# the text encoders' modules (vl_fusion) — ~3 s a stage on this 2-core machine (benchmarks/warm_start.py).
# Importing them creates no engine, connection or thread, so the fork stays clean. Some names (MLflow's schema
# modules) change with MLflow's version: after a lock upgrade, tests/test_warm.py names any the forks import anew.
STORES = ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
          "mlflow.store.tracking.sqlalchemy_workspace_store", "mlflow.store.db.trace_analytics_backfill_75868b020152",
          "mlflow.store.db.trace_analytics_schema_75868b020152",
          "alembic.runtime.migration", "alembic.command", "git", "matplotlib.backends.backend_agg",
          "transformers.models.albert.modeling_albert", "transformers.models.bert.modeling_bert", "jinja2", "typer",
          "sqlalchemy.dialects.sqlite", "alembic.config", "pyarrow.dataset", "skimage.filters", "skimage.transform", "skimage.exposure")
PRELOAD = LIBRARIES + STORES
_HDR = struct.Struct("!I")


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("warm client closed the connection")
        buf += chunk
    return buf


# ---------------------------------------------------------------------------------------------- client
def forward(argv: list[str]) -> int | None:
    """Run ``argv`` in the warm server named by ``MEDOPS_WARM``; its exit status, or None to run cold."""
    path = os.environ.get(ENV, "")
    if not path or path == "0":
        return None
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
    except OSError:
        return None
    env = {k: v for k, v in os.environ.items()}
    body = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": env}).encode()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        socket.send_fds(conn, [_HDR.pack(len(body)) + body], [0, 1, 2])
    except OSError:
        conn.close()
        return None
    child = {"pid": None}

    def relay(sig, _frame):
        if child["pid"]:
            try:
                os.kill(child["pid"], sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGINT and not child["pid"]:
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, relay)
    reader = conn.makefile("r")
    rc = None
    for line in reader:
        kind, _, value = line.strip().partition(" ")
        if kind == "pid":
            child["pid"] = int(value)
        elif kind == "rc":
            rc = int(value)
    conn.close()
    if rc is None:                      # the child died without reporting (killed, segfault)
        print(f"error: the warm worker for `medops {' '.join(argv[1:])}` ended without an exit status "
              f"(killed?); rerun with {ENV}=0 to run it in its own process", file=sys.stderr)
        return 1
    return rc


# ---------------------------------------------------------------------------------------------- server
def _watch_client(conn: socket.socket) -> None:
    """The client never writes after its request: end of stream means it died (``kill -9``, its session
    killed). The command then gets SIGTERM, as it would had it been the killed process itself."""
    try:
        while conn.recv(64):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def _child(conn: socket.socket, req: dict, fds: list[int]) -> None:
    """In the forked child: become the command's process, run it, report the status, exit."""
    rc = 1
    try:
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        # the client's PYTHONPATH (a plugin family's folder) as its own interpreter would have put it on sys.path
        extra = [q for q in req["env"].get("PYTHONPATH", "").split(os.pathsep) if q]
        sys.path[1:1] = [q for q in extra if q not in sys.path]
        sys.argv = list(req["argv"])
        sys.modules.pop("medops.warm", None)     # the server's code is not the command's (import logs)
        conn.sendall(f"pid {os.getpid()}\n".encode())
        threading.Thread(target=_watch_client, args=(conn,), daemon=True).start()
        from medops.cli import app

        try:
            app(args=sys.argv[1:], prog_name="medops", standalone_mode=True)
            rc = 0
        except SystemExit as exc:
            code = exc.code
            rc = code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException:               # noqa: BLE001 - report it as the process would have
        import traceback

        traceback.print_exc()
        rc = 1
    finally:
        try:
            atexit._run_exitfuncs()     # what interpreter exit would run (MLflow ends runs, import logs)
        except BaseException:           # noqa: BLE001
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:           # noqa: BLE001
                pass
        try:
            conn.sendall(f"rc {rc}\n".encode())
        except OSError:
            pass
        os._exit(rc)


def serve(path: str, *, preload: tuple[str, ...] = PRELOAD, idle_s: float = 0) -> None:
    """Import ``preload``, listen on the Unix socket ``path`` and fork a child per request until killed, until
    the process that started it has gone, or (with ``idle_s``) until that long without a request."""
    t0 = time.perf_counter()
    # ask the CUDA driver nothing before the fork (a child cannot use CUDA initialised in its parent):
    # torch's availability check through NVML does not initialise it
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:               # noqa: BLE001 - a missing optional library only costs speed
            pass
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)     # children are reaped by the kernel
    sock_path = Path(path)
    sock_path.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock_path))
    srv.listen(16)
    srv.settimeout(1.0)
    parent, last = os.getppid(), time.monotonic()
    print(f"medops warm server: {len(preload)} libraries imported in {time.perf_counter() - t0:.1f} s, "
          f"listening on {sock_path}", file=sys.stderr, flush=True)
    try:
        while True:
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                # the process that started it is gone (`medops run` killed outright): do not linger
                if os.getppid() != parent or (idle_s and time.monotonic() - last > idle_s):
                    break
                continue
            last = time.monotonic()
            try:
                conn.settimeout(30)
                head, fds, _flags, _addr = socket.recv_fds(conn, _HDR.size, 3)
                (n,) = _HDR.unpack(head)
                req = json.loads(_recv_exact(conn, n))
                conn.settimeout(None)
            except (OSError, ValueError, struct.error, ConnectionError):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                srv.close()
                _child(conn, req, fds)
            for fd in fds:
                os.close(fd)
            conn.close()
    finally:
        srv.close()
        sock_path.unlink(missing_ok=True)


class WarmServer:
    """``with WarmServer() as env:`` a warm server for the block; ``env`` holds ``MEDOPS_WARM`` to pass
    to subprocesses (empty when it could not start: the commands then run cold)."""

    def __init__(self, directory: str | Path | None = None, *, timeout_s: float = 120.0,
                 preload: tuple[str, ...] | None = None):
        import tempfile

        # a Unix socket path must stay under ~100 bytes: the temp folder, not the (deep) project folder
        self.path = Path(directory or tempfile.gettempdir()) / f"medops-warm-{os.getpid()}-{id(self) % 10**6}.sock"
        self.timeout_s = timeout_s
        self.preload = preload          # None: PRELOAD
        self.proc = None

    def __enter__(self) -> dict:
        import subprocess

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        names = [] if self.preload is None else ["--preload", ",".join(self.preload)]
        self.proc = subprocess.Popen([sys.executable, "-m", "medops.warm", str(self.path), *names],
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.path.exists():
                return {ENV: str(self.path)}
            time.sleep(0.1)
        self.__exit__(None, None, None)
        return {ENV: "0"}

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:           # noqa: BLE001
                self.proc.kill()
        self.path.unlink(missing_ok=True)


def _term(_sig, _frame):
    raise SystemExit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _term)
    if len(sys.argv) > 3 and sys.argv[2] == "--preload":
        serve(sys.argv[1], preload=tuple(n for n in sys.argv[3].split(",") if n))
    else:
        serve(sys.argv[1])
