"""``manycore.map`` / ``manycore.imap`` on one process-wide pool: reused across calls, replaced when a call asks
for other options or the pool can no longer serve, private to each process after ``os.fork()``, safe from two
threads at once, stopped at interpreter exit. Real processes and signals throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

import manycore
from manycore import _api, _launch

from proc_helpers import children, gone, wait_no_new_children
from tasks import pid, sleep_return, square

pytestmark = pytest.mark.timeout(90)


EARLIER: set[int] = set()  # this process's children when the test started (other tests' helpers)


@pytest.fixture(autouse=True)
def fresh_shared_pool() -> Iterator[None]:
    """Each test starts without a shared pool and leaves none (nor any process) behind."""
    _api._stop_shared()
    EARLIER.clear()
    EARLIER.update(children())
    yield
    _api._stop_shared()
    assert wait_no_new_children(EARLIER) == set()


def pids_of_shared_pool() -> set[int]:
    """Its fork server and workers: this process's children that the test started."""
    assert _api._shared is not None
    return children() - EARLIER


def both_workers(**options: object) -> set[int]:
    # Items that each take a while, one per chunk: both workers get some (two chunks each are sent at once).
    return set(manycore.map(pid_after, [0.05] * 6, workers=2, chunksize=1, **options))  # type: ignore[arg-type]


def pid_after(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def run_script(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "PYTHONUNBUFFERED")}
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "PYTHONPATH": path},
    )


# ---- reuse ------------------------------------------------------------------------------------------------


def test_calls_reuse_the_same_workers(start_method: str) -> None:
    first = both_workers(start_method=start_method)
    assert len(first) == 2
    pool = _api._shared
    second = both_workers(start_method=start_method)
    assert _api._shared is pool
    assert second <= first
    assert manycore.map(square, range(10), workers=2, start_method=start_method) == [x * x for x in range(10)]
    assert sorted(manycore.map(square, range(5), workers=2, start_method=start_method, ordered=False)) == [
        0,
        1,
        4,
        9,
        16,
    ]
    assert (
        list(manycore.imap(pid, range(4), workers=2, start_method=start_method))
        and set(manycore.imap(pid, range(4), workers=2, start_method=start_method)) <= first
    )
    assert _api._shared is pool and pool.users == 0


def test_default_workers_and_start_method_are_reused() -> None:
    assert manycore.map(square, [1, 2]) == [1, 4]
    pool = _api._shared
    assert pool is not None
    # The same options spelled out: the cores this process may use, the default start method.
    assert manycore.map(square, [3], workers=pool.pool._processes, start_method=pool.start_method) == [9]
    assert manycore.map(square, [4]) == [16]
    assert _api._shared is pool


# ---- replacement -------------------------------------------------------------------------------------------


OTHER_METHOD = next(
    (m for m in _launch.available_start_methods() if m != _launch.default_start_method()), None
)


@pytest.mark.parametrize(
    "other", [{"workers": 3}, {"start_method": OTHER_METHOD}], ids=["workers", "start_method"]
)
def test_other_options_replace_the_pool(other: dict[str, object]) -> None:
    if other.get("start_method", "") is None:
        pytest.skip("this platform has one start method")
    default = _launch.default_start_method()
    first = both_workers(start_method=default)
    old = _api._shared
    options = {"workers": 2, "start_method": default, **other}
    assert manycore.map(square, range(6), **options) == [x * x for x in range(6)]  # type: ignore[arg-type]
    new = _api._shared
    assert new is not None and new is not old
    assert new.pool._processes == options["workers"]
    assert new.pool._scheduler.start_method == options["start_method"]
    assert gone(first), "the replaced pool's workers still run"
    assert not pids_of_shared_pool() & first


def test_engine_backends_get_a_pool_per_call_and_leave_the_shared_one() -> None:
    first = both_workers()
    pool = _api._shared
    assert manycore.map(square, range(5), workers=2, backend="thread") == [0, 1, 4, 9, 16]
    assert list(manycore.imap(square, range(3), workers=2, backend="thread")) == [0, 1, 4]
    assert _api._shared is pool
    assert both_workers() <= first


def test_an_abandoned_imap_lets_the_pool_be_replaced() -> None:
    results = manycore.imap(square, range(1000), workers=2)
    assert next(results) == 0
    old = _api._shared
    assert old is not None and old.users == 1
    del results  # collected: counts as closed
    assert old.users == 0
    workers = pids_of_shared_pool()
    assert manycore.map(square, [2], workers=3) == [4]
    assert gone(workers)


def test_an_imap_collected_while_a_call_replaces_the_pool_does_not_deadlock() -> None:
    """An abandoned imap in a reference cycle is finalized by the cyclic collector, which can run inside the
    call that is making a new pool (many allocations) and holds the module's lock: its release must not wait
    for that lock (a plain Lock hung the program for good, at the 4th call on 3.11)."""
    proc = run_script(
        """
        import faulthandler, manycore
        faulthandler.dump_traceback_later(30, exit=True)
        class Job:
            def __init__(self):
                self.me = self
                self.results = manycore.imap(abs, range(-100, 0), workers=2)
        for i in range(12):
            job = Job()
            next(job.results)
            del job
            assert manycore.map(abs, [-1, -2], workers=1 + i % 2) == [1, 2]
        print("done")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["done"]
    assert "ResourceWarning" not in proc.stderr  # the shared pools are the module's, never "forgotten"


def test_dropping_an_imap_of_a_replaced_pool_does_not_wait_for_its_tasks() -> None:
    """Its pool was replaced, so nothing else uses it: letting the iterator go stops that pool at once (the
    tasks still running are abandoned with it), where waiting for them blocked the caller for their length."""
    results = manycore.imap(sleep_return, [0.0] + [30.0] * 4, workers=2, chunksize=1)
    assert next(results) == 0.0
    assert manycore.map(square, [2], workers=3) == [4]  # replaces the pool `results` still uses
    started = time.monotonic()
    del results
    assert time.monotonic() - started < 10


def test_a_call_running_in_another_thread_keeps_its_pool_until_it_ends() -> None:
    # Thread A runs a slow map on workers=2 while the main thread asks for workers=3: A must finish on its pool
    # (closed once A leaves it), not fail with a closed pool.
    out: list[object] = []
    started = threading.Event()

    def slow() -> None:
        started.set()
        try:
            out.append(manycore.map(sleep_return, [0.3] * 4, workers=2, chunksize=1))
        except BaseException as exc:  # reported below
            out.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    started.wait()
    while _api._shared is None or _api._shared.users == 0:
        time.sleep(0.005)
    old = _api._shared
    old_workers = pids_of_shared_pool()
    assert manycore.map(square, range(4), workers=3) == [0, 1, 4, 9]
    thread.join(60)
    assert out == [[0.3] * 4]
    assert old.retired and old.users == 0
    assert gone(old_workers), "the replaced pool was not stopped by the last call that used it"


# ---- threads -----------------------------------------------------------------------------------------------


def test_two_threads_at_once_share_one_pool() -> None:
    barrier = threading.Barrier(2)
    results: dict[int, object] = {}

    def call(k: int) -> None:
        barrier.wait()
        try:
            results[k] = [manycore.map(square, range(k, k + 50), workers=2) for _ in range(5)]
        except BaseException as exc:
            results[k] = exc

    threads = [threading.Thread(target=call, args=(k,)) for k in (0, 100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for k in (0, 100):
        assert results[k] == [[x * x for x in range(k, k + 50)]] * 5
    assert _api._shared is not None and _api._shared.users == 0


def test_two_threads_with_different_options_both_get_their_results() -> None:
    results: dict[int, object] = {}

    def call(workers: int) -> None:
        try:
            results[workers] = [manycore.map(square, range(20), workers=workers) for _ in range(4)]
        except BaseException as exc:
            results[workers] = exc

    threads = [threading.Thread(target=call, args=(n,)) for n in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {2: [[x * x for x in range(20)]] * 4, 3: [[x * x for x in range(20)]] * 4}


# ---- faults ------------------------------------------------------------------------------------------------


def test_a_killed_worker_does_not_break_later_calls(start_method: str) -> None:
    first = both_workers(start_method=start_method)
    pool = _api._shared
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    assert gone({victim})
    assert manycore.map(square, range(10), workers=2, start_method=start_method) == [x * x for x in range(10)]
    assert _api._shared is pool  # the pool replaced its worker; it was not replaced itself
    assert victim not in pids_of_shared_pool()


def test_a_task_timeout_kill_does_not_break_later_calls() -> None:
    out = manycore.map(
        sleep_return, [0.0, 30.0, 0.0], workers=2, chunksize=1, task_timeout=0.5, on_error="return"
    )
    assert out[0] == 0.0 and out[2] == 0.0 and isinstance(out[1], manycore.TaskTimeoutError)
    pool = _api._shared
    assert manycore.map(square, range(10), workers=2) == [x * x for x in range(10)]
    assert _api._shared is pool


def test_a_terminated_pool_is_replaced_by_the_next_call() -> None:
    first = both_workers()
    old = _api._shared
    assert old is not None
    old.pool.terminate()  # what Ctrl-C during a call does (see the script test below for the signal itself)
    assert both_workers() & first == set()
    assert _api._shared is not old


def test_ctrl_c_during_a_call_stops_that_pool_and_the_next_call_makes_a_fresh_one() -> None:
    proc = run_script(
        """
        import os, signal, threading, time
        import manycore
        from manycore import _api
        from tasks import pid, sleep_return

        import psutil
        manycore.map(pid, range(4), workers=2)
        old = _api._shared
        workers = {p.pid for p in psutil.Process().children(recursive=True)}
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            manycore.map(sleep_return, [30.0] * 4, workers=2, chunksize=1)
        except KeyboardInterrupt:
            print("interrupted")
        def running(p):
            try:
                return psutil.Process(p).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + 10
        while any(map(running, workers)) and time.monotonic() < deadline:
            time.sleep(0.02)
        print("old workers alive:", [p for p in workers if running(p)])
        again = set(manycore.map(pid, range(4), workers=2))
        print("fresh pool:", _api._shared is not old, "shared pids:", bool(again & workers))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "interrupted",
        "old workers alive: []",
        "fresh pool: True shared pids: False",
    ]
    assert proc.stderr == ""


# ---- os.fork() in the user's program ------------------------------------------------------------------------


def test_a_forked_child_makes_its_own_pool_and_leaves_the_parents_alone() -> None:
    proc = run_script(
        """
        import os, warnings
        import manycore
        from manycore import _api
        from tasks import pid, square

        # The shared pool's supervisor is a thread: Python 3.12+ warns about fork() in a threaded process.
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        import psutil
        assert manycore.map(square, range(5), workers=2) == [0, 1, 4, 9, 16]
        parent_workers = {p.pid for p in psutil.Process().children(recursive=True)}
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            code = 1
            try:
                out = manycore.map(square, range(10), workers=2)
                mine = set(manycore.map(pid, range(6), workers=2))
                os.write(w, repr((out, sorted(mine & parent_workers))).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        report = b""
        while chunk := os.read(r, 4096):
            report += chunk
        _, status = os.waitpid(child, 0)
        print("child:", os.waitstatus_to_exitcode(status), report.decode())
        print("parent:", manycore.map(square, range(5), workers=2),
              set(manycore.map(pid, range(6), workers=2)) <= parent_workers)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"child: 0 {([x * x for x in range(10)], [])!r}",
        "parent: [0, 1, 4, 9, 16] True",
    ]
    assert proc.stderr == ""


# ---- interpreter exit --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["map", "imap left open", "daemon thread mid-call"])
def test_interpreter_exit_stops_the_pool_without_hang_leak_or_warning(how: str) -> None:
    proc = run_script(
        f"""
        import gc, os, sys, threading
        import manycore
        from manycore import _api
        from tasks import sleep_return, square

        how = {how!r}
        if how == "map":
            assert manycore.map(square, range(10), workers=2) == [x * x for x in range(10)]
        elif how == "imap left open":
            results = manycore.imap(square, range(1000), workers=2)
            next(results)
        else:
            def call():
                try:
                    manycore.map(sleep_return, [30.0] * 4, workers=2, chunksize=1)
                except manycore.errors.PoolClosedError:  # what a call cut short by the exit gets
                    pass

            threading.Thread(target=call, daemon=True).start()
            while _api._shared is None or not _api._shared.pool.statistics()["chunks_in_flight"]:
                pass
        import psutil, time
        time.sleep(0.2)  # both workers started
        print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)))
        sys.stdout.flush()
        """,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    pids = {int(p) for p in proc.stdout.split()}
    assert len(pids) == (
        3 if _launch.default_start_method() == "forkserver" else 2
    )  # the fork server, if any
    assert gone(pids), "a worker or the fork server outlived the program"
    # No ResourceWarning (an unclosed pool), no traceback from a thread or an exit hook.
    assert proc.stderr == ""
