"""Child-process bookkeeping for the tests: what a test leaves running is a bug."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


def wait_no_new_children(before: set[int], timeout: float = 5.0) -> set[int]:
    """Children of this process that appeared since `before` and are still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        extra = children() - before
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.02)


def running(pid: int) -> bool:
    """Alive and not a zombie (a process may end between the two questions)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pids: set[int], timeout: float = 10) -> bool:
    """Whether every process in ``pids`` has ended (or is a zombie) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {p for p in pids if running(p)}
        if not alive:
            return True
        time.sleep(0.02)
    return False


def python_output(code: str, *args: str, timeout: float = 60) -> str:
    """Run ``code`` in a fresh interpreter (``python -c``), require it to succeed, and return its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
