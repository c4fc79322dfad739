"""One writer per output folder: an exclusive, advisory lock (``fcntl.flock``) held while a training,
preprocessing or generation writes. A second writer fails at once naming the holder; a lock file left by
a dead process is detected (the kernel released its lock) and taken over, with a note."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from medops.errors import MedopsError

LOCK_DIR = Path(".medops/locks")  # outside every DVC-tracked output


class LockedError(MedopsError):
    pass


def _lock_file(target: Path) -> Path:
    key = hashlib.sha256(str(Path(target).resolve()).encode()).hexdigest()[:16]
    return LOCK_DIR / f"{Path(target).name}-{key}.lock"


@contextlib.contextmanager
def exclusive(target: Path, what: str):
    """Hold the write lock of ``target`` (a folder or file) for the ``with`` block."""
    path = _lock_file(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            raise LockedError(str(target), f"one_writer: {what} is already being written by "
                              f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                              f"({' '.join(holder.get('argv', [])) or 'unknown command'}, since {holder.get('since', '?')})",
                              "wait for it to finish (or stop it); parallel ablation cells each have their own folder")
        held = True
        previous = _read(fd)
        if previous.get("pid") and previous.get("host") == socket.gethostname() and not _alive(previous["pid"]):
            print(f"note: stale lock on {target} from dead pid {previous['pid']} ({previous.get('since')}); taken over",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv[1:],
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "target": str(target)}).encode(), 0)
        yield
    finally:
        if held:
            os.ftruncate(fd, 0)  # a clean release leaves no holder behind: only a crashed one is "stale"
        os.close(fd)  # releases the lock


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except Exception:
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
