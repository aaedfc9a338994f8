"""Objects that fail while being pickled or unpickled, the way CPython's test_concurrent_futures builds them.

Importable by workers (tasks refer to them by reference).
"""

from __future__ import annotations

import os
import pickle
import sys


def _exit() -> None:
    sys.exit(1)


def _raise(exc_type: type[BaseException]) -> None:
    raise exc_type("raised while unpickling")


class ErrorAtPickle:
    def __reduce__(self) -> tuple[object, ...]:
        raise pickle.PicklingError("Error in pickle")


class RuntimeErrorAtPickle:
    def __reduce__(self) -> tuple[object, ...]:
        raise RuntimeError("no pickling this")


class ExitAtPickle:
    def __reduce__(self) -> tuple[object, ...]:
        _exit()
        raise AssertionError("unreachable")


class ExitAtUnpickle:
    def __reduce__(self) -> tuple[object, ...]:
        return _exit, ()


class ErrorAtUnpickle:
    def __reduce__(self) -> tuple[object, ...]:
        return _raise, (pickle.UnpicklingError,)


class ErrorAtUnpickleInWorker:
    """Unpickles in the parent (where it was made), fails in any other process."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __reduce__(self) -> tuple[object, ...]:
        return _check_pid, (self.pid,)


def _check_pid(pid: int) -> ErrorAtUnpickleInWorker:
    if os.getpid() != pid:
        raise pickle.UnpicklingError(f"this object only unpickles in process {pid}")
    return ErrorAtUnpickleInWorker.__new__(ErrorAtUnpickleInWorker)


class UnloadableFunction:
    """A task "function" that pickles in the parent and cannot be unpickled in a worker."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __call__(self, x: int) -> int:
        return x

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_function, (self.pid,)


def _rebuild_function(pid: int) -> UnloadableFunction:
    if os.getpid() != pid:
        raise pickle.UnpicklingError("this function only unpickles where it was made")
    fn = UnloadableFunction.__new__(UnloadableFunction)
    fn.pid = pid
    return fn


def make(x: int, bad: int, cls_name: str) -> object:
    """x itself, except that item `bad` returns an instance of the named class from this module."""
    return globals()[cls_name]() if x == bad else x


def logged_make(x: int, bad: int, cls_name: str, log_dir: str) -> object:
    """``make``, leaving a file per run in log_dir (see sched_tasks.runs_of)."""
    from .sched_tasks import log_run

    log_run(x, log_dir)
    return make(x, bad, cls_name)


def identity(x: object) -> object:
    return x


def pid_of(_: object) -> int:
    return os.getpid()
