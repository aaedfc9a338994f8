"""Tasks that leave a child behind: forked without exec, so it holds copies of the worker's descriptors."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import time

LINGER = 60.0  # seconds the left-behind child sleeps: far longer than any result may take


def _leave_child(pid_dir: str, how: str) -> None:
    """Start a child that outlives this task, and record its pid in ``pid_dir`` (the test kills it)."""
    if how == "os.fork":
        pid = os.fork()
        if pid == 0:
            try:
                time.sleep(LINGER)
            finally:
                os._exit(0)
    else:  # a multiprocessing Process with the fork method (a background helper, as libraries start them)
        process = multiprocessing.get_context("fork").Process(target=time.sleep, args=(LINGER,), daemon=True)
        process.start()
        pid = process.pid
    with open(os.path.join(pid_dir, f"{pid}.pid"), "w") as f:
        f.write(str(pid))


def leave_child_then_die(pid_dir: str, how: str, death: str) -> None:
    _leave_child(pid_dir, how)
    if death == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        ctypes.string_at(0)  # a real segmentation fault


def leave_child_then_hang(pid_dir: str, how: str) -> None:
    _leave_child(pid_dir, how)
    time.sleep(LINGER)


def leave_child_then_return(pid_dir: str, how: str) -> int:
    _leave_child(pid_dir, how)
    return os.getpid()
