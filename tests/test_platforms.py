"""The portable paths: what MANYCORE_PLATFORM hides, the errors for what a platform lacks, and the connect-back
channel's key. Each case runs in a fresh interpreter, since manycore reads the switch once per process (the
whole suite also runs in each simulated mode: see .ci/run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from manycore import _platform

from proc_helpers import gone, running

pytestmark = pytest.mark.timeout(120)


def run(code: str, platform: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MANYCORE_PLATFORM": platform}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=100
    )


def report(code: str, platform: str) -> dict[str, object]:
    proc = run(code, platform)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


CHOICES = """
import json
from manycore import _channel, _launch, _platform, _shm
from manycore._process import _poller
print(json.dumps({
    "kind": _shm.KIND,
    "pass_fds": _channel.PASS_FDS,
    "methods": _launch.available_start_methods(),
    "default": _launch.default_start_method(),
    "poller": type(_poller.make_poller()).__name__,
    "describe": _platform.describe(),
}))
"""


@pytest.mark.skipif(_platform.simulated() is not None, reason="checks the switch from the native platform")
@pytest.mark.needs("memfd", "epoll", "seqpacket", "pdeathsig")
def test_each_mode_chooses_the_mechanisms_its_platform_has() -> None:
    assert report(CHOICES, "native") == {
        "kind": "memfd",
        "pass_fds": True,
        "methods": ["forkserver", "fork", "spawn"],
        "default": "forkserver",
        "poller": "Poller",
        "describe": sys.platform,
    }
    macos = report(CHOICES, "macos-like")
    assert macos["kind"] == "shm" and macos["pass_fds"] is True
    assert macos["methods"] == ["fork", "spawn"] and macos["default"] == "spawn"
    assert macos["poller"] == "PortablePoller"
    windows = report(CHOICES, "windows-like")
    assert windows["kind"] == "named" and windows["pass_fds"] is False
    assert windows["methods"] == ["spawn"] and windows["default"] == "spawn"
    assert windows["describe"] == f"{sys.platform} (simulating windows-like)"


def test_an_unknown_platform_name_is_refused_with_the_names_it_takes() -> None:
    proc = run("import manycore; manycore.Pool(1)", "solaris-like")
    assert proc.returncode != 0
    assert "MANYCORE_PLATFORM='solaris-like'" in proc.stderr and "windows-like" in proc.stderr


def test_a_start_method_the_platform_lacks_is_a_clear_error_before_any_worker_starts() -> None:
    proc = run(
        """
        import manycore
        try:
            manycore.Pool(2, start_method="fork")
        except ValueError as exc:
            print(exc)
        """,
        "windows-like",
    )
    assert proc.returncode == 0, proc.stderr
    assert "start_method='fork' is not available here" in proc.stdout
    assert "lacks os.fork()" in proc.stdout and "'spawn'" in proc.stdout


def test_initargs_that_need_descriptors_are_refused_where_none_can_be_passed() -> None:
    proc = run(
        """
        import multiprocessing, manycore
        from manycore.errors import SerializationError
        queue = multiprocessing.get_context("spawn").Queue()
        try:
            manycore.Pool(1, initializer=print, initargs=(queue,))
        except SerializationError as exc:
            print(exc)
        """,
        "windows-like",
    )
    assert proc.returncode == 0, proc.stderr
    assert "descriptor passing" in proc.stdout and "Manager()" in proc.stdout


def test_a_stranger_connecting_to_the_listener_is_refused_and_the_pool_works_on() -> None:
    """Without descriptor passing, workers connect back over loopback: a local process that connects without the
    one-time key is closed unread, never taken for a worker, and the pool's results are still right. Silent
    connections hold no worker's start back while they are given time to present a key: with an hour each
    here, a start that waited for them would run into this test's timeout (before, each silent connection
    held every later worker start for 5 s, one after another)."""
    out = report(
        """
        import json, os, socket
        import manycore
        from manycore import _launch

        _launch.KEY_WAIT = 3600.0

        def pid(_):
            return os.getpid()

        with manycore.Pool(1, maxtasksperchild=1) as pool:
            assert pool.map(pid, range(2), chunksize=1)  # the listener exists, and workers are replaced
            host, port = pool._scheduler._launcher._listener.getsockname()[:2]
            stranger = socket.create_connection((host, port))
            stranger.sendall(os.urandom(32))  # a wrong key
            stranger.settimeout(30)
            silent = [socket.create_connection((host, port)) for _ in range(3)]  # no key at all
            results = pool.map(abs, range(-20, 0), chunksize=1)  # each task starts a new worker
            closed = stranger.recv(1) == b""
            for s in silent:
                s.settimeout(30)
                closed = closed and s.recv(1) == b""
                s.close()
        print(json.dumps({"results": results, "closed": closed}))
        """,
        "windows-like",
    )
    assert out == {"results": list(range(20, 0, -1)), "closed": True}


@pytest.mark.parametrize("platform", ["macos-like", "windows-like"])
def test_workers_without_pdeathsig_end_when_their_parent_is_killed(platform: str) -> None:
    """Where PR_SET_PDEATHSIG does not exist, a watchdog thread ends a worker (even one busy in a task) once its
    parent is gone."""
    import signal
    import time

    script = textwrap.dedent(
        """
        import os, sys, time
        import manycore

        def busy(_):
            time.sleep(600)

        with manycore.Pool(2) as pool:
            pool.map_async(busy, range(2), chunksize=1)
            while sum(1 for _ in pool._scheduler._workers.values() if _.inflight) < 2:
                time.sleep(0.05)
            print(" ".join(str(w.pid) for w in pool._scheduler._workers.values()), flush=True)
            time.sleep(600)
        """
    )
    env = {**os.environ, "MANYCORE_PLATFORM": platform}
    with subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        time.sleep(0.5)  # both are in their task
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert gone(set(pids), 10), f"workers outlived their parent: {[p for p in pids if running(p)]}"


@pytest.mark.parametrize("platform", ["macos-like", "windows-like"])
def test_results_of_a_worker_that_exits_right_after_sending_them_arrive(platform: str) -> None:
    """Regression: a worker replaced after each task (maxtasksperchild=1) exits as soon as its result is sent;
    it unlinked the result's named segment on its way out, before the parent had opened it."""
    out = report(
        """
        import json
        import manycore

        def zeros(n):
            return bytes(n)  # 1 MiB: out of band, in a segment the worker lends

        with manycore.Pool(1, maxtasksperchild=1) as pool:
            sizes = [len(pool.apply_async(zeros, (1 << 20,)).get(timeout=60)) for _ in range(4)]
        print(json.dumps({"sizes": sizes}))
        """,
        platform,
    )
    assert out == {"sizes": [1 << 20] * 4}


@pytest.mark.parametrize("platform", ["macos-like", "windows-like"])
def test_a_blocking_apply_does_not_leave_the_supervisor_blind_to_its_worker(platform: str) -> None:
    """Regression: poll and select wait only on what they were given when the wait began; a worker given back
    to the supervisor after a blocking apply() was not watched until something else woke it (a hang)."""
    out = report(
        """
        import json
        import manycore

        with manycore.Pool(1) as pool:
            for i in range(30):
                assert pool.apply(abs, (-i,)) == i
                assert pool.apply_async(abs, (-i,)).get(timeout=10) == i
        print(json.dumps({"ok": True}))
        """,
        platform,
    )
    assert out == {"ok": True}


def test_a_broadcast_released_before_a_worker_reads_it_does_not_kill_the_worker() -> None:
    """Regression (named segments): releasing a broadcast unlinks its name, possibly before a busy worker reads
    the message that names it; that worker must live on (the task that uses the handle fails, saying so)."""
    out = report(
        """
        import json, time
        import manycore

        def nap(t):
            time.sleep(t)
            return 0

        def total(h):
            return float(sum(h))

        with manycore.Pool(1) as pool:
            pid = pool.apply(__import__("os").getpid)
            handle = pool.broadcast(bytes(1 << 20))
            pool.apply_async(nap, (0.5,))
            late = pool.apply_async(total, (handle,))
            time.sleep(0.1)
            handle.release()
            try:
                late.get(timeout=30)
                outcome = "ran"
            except Exception as exc:
                outcome = type(exc).__name__
            same_worker = pool.apply(__import__("os").getpid) == pid
        print(json.dumps({"outcome": outcome, "same_worker": same_worker}))
        """,
        "windows-like",
    )
    assert out["same_worker"] is True
    # It ran (the worker had mapped it), or the handle was refused when its task was sent after the release.
    assert out["outcome"] == "ran" or str(out["outcome"]).startswith("SerializationError"), out
