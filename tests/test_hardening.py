"""Hardening: frames from workers are checked, and the supervisor thread cannot die silently.

Real workers forge real frames on their own sockets (``hardening_tasks.forge``); real callbacks raise and call
``sys.exit()``; a real result unpickles into a ``KeyboardInterrupt`` in the parent's supervisor thread.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import manycore
from hardening_tasks import forge, forge_ready_once
from manycore.errors import PoolBrokenError, WorkerLostError

from tasks import square

FORGERIES = [
    "garbage",
    "huge-length",
    "unknown-kind",
    "foreign-chunk",
    "ready-other-pid",
    "missing-fd",
    "unannounced-fd",
]


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process a forged READY names as the worker's pid: the parent must never signal it."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


def _check_forgery(pool: manycore.Pool, how: str, marker: Path, victim_pid: int) -> None:
    calls = [
        pool.apply_async(forge, (how, str(marker), victim_pid)) if i == 2 else pool.apply_async(square, (i,))
        for i in range(6)
    ]
    with pytest.raises(WorkerLostError, match="malformed message") as info:
        calls[2].get(60)
    assert info.value.pid is not None
    assert [c.get(60) for i, c in enumerate(calls) if i != 2] == [0, 1, 9, 16, 25]
    assert pool.map(square, range(20)) == [x * x for x in range(20)]  # the pool survived, with a new worker
    assert not marker.exists(), "the parent unpickled the body of a refused frame"


@pytest.mark.needs("memfd", "fd_passing")  # the forger finds the socket and status page as Linux shows them
@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", FORGERIES)
def test_forged_frame_fails_only_its_item(
    how: str, tmp_path: Path, victim: subprocess.Popen[bytes], no_leftover_processes: None
) -> None:
    with manycore.Pool(2) as pool:
        _check_forgery(pool, how, tmp_path / "unpickled", victim.pid)
    assert victim.poll() is None, "the parent signalled the pid a forged READY named"


@pytest.mark.needs("memfd", "fd_passing")
@pytest.mark.timeout(90)
def test_forged_frame_every_start_method(
    start_method: str, tmp_path: Path, no_leftover_processes: None
) -> None:
    with manycore.Pool(2, start_method=start_method) as pool:
        _check_forgery(pool, "huge-length", tmp_path / "unpickled", 0)
        _check_forgery(pool, "garbage", tmp_path / "unpickled", 0)


@pytest.mark.timeout(90)
def test_ready_naming_another_pid_is_refused(
    start_method: str, tmp_path: Path, victim: subprocess.Popen[bytes], no_leftover_processes: None
) -> None:
    """An initializer forges READY with another process's pid: the parent must never SIGKILL that process."""
    marker = tmp_path / "forged"
    with manycore.Pool(
        2, initializer=forge_ready_once, initargs=(str(marker), victim.pid), start_method=start_method
    ) as pool:
        assert pool.map(square, range(20), chunksize=1) == [x * x for x in range(20)]
        pool.terminate()  # kills every worker by its pid: the forged one must not be among them
    assert marker.exists()
    assert victim.poll() is None, "the parent signalled the pid a forged READY named"


# ---- callbacks -----------------------------------------------------------------------------------------------


def _exit(_: object) -> None:
    sys.exit("a callback called sys.exit()")


def _raise(_: object) -> None:
    raise RuntimeError("callback failed")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("callback", [_exit, _raise])
@pytest.mark.parametrize("which", ["callback", "error_callback"])
def test_callback_that_raises_is_reported_and_the_pool_goes_on(
    callback: object, which: str, pool: manycore.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[threading.ExceptHookArgs] = []
    hook = threading.excepthook
    # Replaced for this test only, as an application would; the standard hook prints (and is silent on
    # SystemExit, which _report_callback_error prints itself: see test_sys_exit_in_callback_printed).
    threading.excepthook = seen.append
    try:
        fn = square if which == "callback" else _raise
        first = pool.apply_async(fn, (3,), **{which: callback})
        first.wait(30)
        second = pool.map_async(fn, [1, 2], **{which: callback})
        second.wait(30)
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
        assert pool.apply(square, (7,)) == 49
        deadline = 50
        while len(seen) < 2 and deadline:
            threading.Event().wait(0.1)
            deadline -= 1
    finally:
        threading.excepthook = hook
    assert [type(args.exc_value) for args in seen] == [SystemExit if callback is _exit else RuntimeError] * 2
    assert "raised by the callback" in "".join(
        getattr(seen[0].exc_value, "__notes__", ["raised by the callback"])
    )
    assert pool.statistics()["workers"] == 2


# One worker: the two results arrive in order and the supervisor runs their callbacks in that order, so once
# `done` is set the first callback's report is printed. With two workers the second could come first, and the
# script could end (terminating the pool) while the supervisor was still printing the report (5 runs in 60).
CHILD = r"""
import sys, threading, manycore
sys.path.insert(0, {tests!r})
from tasks import square
def bye(_): sys.exit(3)
with manycore.Pool(1) as pool:
    done = threading.Event()
    pool.apply_async(square, (2,), callback=bye)
    pool.apply_async(square, (3,), callback=lambda _: done.set())
    assert done.wait(30)
    print("after", pool.map(square, range(4)), flush=True)
"""


@pytest.mark.timeout(60)
def test_sys_exit_in_callback_printed() -> None:
    """With the standard excepthook, a callback's sys.exit() is printed with its traceback, not obeyed."""
    tests = str(Path(__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(tests=tests)], capture_output=True, text=True, timeout=50
    )
    assert out.returncode == 0, out.stderr
    assert "after [0, 1, 4, 9]" in out.stdout
    assert "raised by the callback <function bye" in out.stderr
    assert "SystemExit: 3" in out.stderr


# ---- the supervisor itself fails -----------------------------------------------------------------------------


def _interrupt() -> None:
    raise KeyboardInterrupt("unpickled a result that interrupts")


class ExitsWhenUnpickled:
    """Pickles fine in the worker; unpickling it in the parent raises KeyboardInterrupt in the supervisor thread.

    (A SystemExit or any other exception there is that item's error: see tests/faults/test_pickling_errors.py.
    A KeyboardInterrupt is not swallowed, so it reaches the supervisor loop itself: a real failure of it.)"""

    def __reduce__(self) -> tuple[object, ...]:
        return (_interrupt, ())


def exits_when_unpickled(_: object) -> ExitsWhenUnpickled:
    return ExitsWhenUnpickled()


@pytest.mark.timeout(60)
def test_supervisor_failure_breaks_the_pool_loudly(start_method: str, no_leftover_processes: None) -> None:
    pool = manycore.Pool(2, start_method=start_method)
    try:
        slow = pool.map_async(square, range(4))
        slow.wait(30)
        workers = pool.statistics()["workers"]
        assert workers == 2
        pending = pool.apply_async(exits_when_unpickled, (0,))
        with pytest.raises(PoolBrokenError, match="KeyboardInterrupt") as info:
            pending.get(30)
        assert isinstance(info.value.__cause__, KeyboardInterrupt)
        for call in (
            lambda: pool.map(square, range(3)),
            lambda: pool.apply(square, (1,)),
            lambda: pool.apply_async(square, (1,)).get(30),
            lambda: list(pool.imap(square, range(3))),
        ):
            with pytest.raises(PoolBrokenError):
                call()
        assert pool._scheduler.join(10)  # the supervisor has stopped its workers and itself
        assert "state=broken" in repr(pool)
    finally:
        pool.terminate()
        pool.join()


@pytest.mark.timeout(60)
def test_supervisor_failure_fails_waiting_executor_futures(no_leftover_processes: None) -> None:
    with manycore.Executor(2) as ex:
        waiting = [ex.submit(square, i) for i in range(3)]
        bad = ex.submit(exits_when_unpickled, 0)
        with pytest.raises(PoolBrokenError):
            bad.result(30)
        for f in waiting:
            with contextlib.suppress(PoolBrokenError):  # finished before the failure, or failed by it
                assert f.result(30) in (0, 1, 4)
        with pytest.raises(PoolBrokenError):
            ex.submit(square, 1).result(30)


def test_pool_broken_error_is_public() -> None:
    from concurrent.futures.process import BrokenProcessPool

    assert issubclass(PoolBrokenError, BrokenProcessPool)
    assert issubclass(PoolBrokenError, manycore.ManycoreError)
    assert "PoolBrokenError" in manycore.errors.__all__
