"""Descriptors and processes: what programs started by tasks inherit, os.fork() with a pool open, results held
under RLIMIT_NOFILE, the sys.path of new interpreters, nested pools. Real processes and limits throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import fd_tasks
import manycore
from manycore._options import cpu_count
from manycore.errors import WorkerLostError

HERE = Path(__file__).parent
SCRIPT = HERE / "fd_script.py"


def run_script(*args: str, timeout: float = 90, cwd: Path | None = None) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    return {
        k: v for line in done.stdout.splitlines() if line.startswith("{") for k, v in json.loads(line).items()
    }


def gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    """The processes of ``pids`` still alive (not zombies) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def inheritable_targets() -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.get_inheritable(int(name)):
                found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return found


# ---- 1. nothing of manycore's is inherited by a program that a task starts ----------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["popen", "system", "posix_spawn"])
def test_program_started_by_task_inherits_nothing(
    start_method: str, how: str, tmp_path: Path, no_leftover_processes: None
) -> None:
    report, marker = tmp_path / "fds.json", tmp_path / "forged"
    # What this process itself leaves inheritable (pytest's, not ours) reaches a forked worker's programs too.
    foreign = set(inheritable_targets().values())
    with manycore.Pool(2, start_method=start_method) as pool:
        assert pool.apply(fd_tasks.start_lister, (how, str(report), str(marker))) == how
        # The pool still works, and nothing the program wrote was taken for a result.
        assert pool.map(abs, range(-20, 0)) == list(range(20, 0, -1))
    inherited = json.loads(report.read_text())
    kinds = ("socket:", "/memfd:", "pipe:", "anon_inode:")
    leaked = {fd: t for fd, t in inherited.items() if t.startswith(kinds) and t not in foreign}
    assert leaked == {}
    assert not marker.exists()


@pytest.mark.timeout(90)
def test_program_started_by_parent_inherits_nothing(
    start_method: str, tmp_path: Path, no_leftover_processes: None
) -> None:
    pytest.importorskip("numpy")
    report, marker = tmp_path / "fds.json", tmp_path / "forged"
    foreign = set(inheritable_targets().values())
    with manycore.Pool(2, start_method=start_method) as pool:
        # Results held on shared-memory segments, and the workers busy, while the parent starts a program.
        held = pool.starmap(fd_tasks.big_result, [(i,) for i in range(4)])
        busy = pool.map_async(time.sleep, [0.2] * 4, chunksize=1)
        fd_tasks.start_lister("popen", str(report), str(marker))
        busy.get(timeout=60)
        assert [int(a[0]) for a in held] == [0, 1, 2, 3]
    inherited = json.loads(report.read_text())
    kinds = ("socket:", "/memfd:", "pipe:", "anon_inode:")
    assert {fd: t for fd, t in inherited.items() if t.startswith(kinds) and t not in foreign} == {}
    assert not marker.exists()


@pytest.mark.timeout(90)
def test_worker_death_seen_while_its_grandchild_lives(
    start_method: str, tmp_path: Path, no_leftover_processes: None
) -> None:
    pidfile = tmp_path / "grandchild"
    try:
        with manycore.Pool(2, start_method=start_method) as pool:
            result = pool.apply_async(fd_tasks.die_leaving_grandchild, (str(pidfile),))
            with pytest.raises(WorkerLostError):
                result.get(timeout=45)  # a hang guard: the loss is seen at once, by EOF
            assert pool.map(abs, [-1, -2]) == [1, 2]
    finally:
        if pidfile.exists():
            grandchild = int(pidfile.read_text())
            os.kill(grandchild, signal.SIGKILL)
            with pytest.raises(ChildProcessError):
                os.waitpid(grandchild, 0)  # not ours: a child of the dead worker, reaped by init


# ---- 2. os.fork() in the user's program with a pool open ----------------------------------------------------


@pytest.mark.timeout(120)
def test_fork_child_cannot_use_or_stop_parents_pool(start_method: str) -> None:
    out = run_script("fork_child_uses_pool", start_method)
    child = str(out["child"])
    assert child.startswith("PoolClosedError"), child
    assert "belongs to process" in child and "create a new pool" in child
    assert out["child_s"] < 30  # raised, not hung (the script's timeout is the real guard)
    assert out["child_status"] == 0
    assert out["parent"] == [5, 6, 7]  # the child's exit left the parent's workers alone


@pytest.mark.timeout(120)
def test_pool_dies_with_parent_while_forked_child_lives(start_method: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "fork_child_outlives_parent", start_method],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    child = None
    try:
        assert proc.stdout is not None
        out = json.loads(proc.stdout.readline())
        child, pool_pids = int(out["child"]), [int(p) for p in out["pool"]]
        assert pool_pids
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert gone(pool_pids) == []
        assert gone([child], timeout=0) == [child]  # the user's child itself is not ours to stop
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if child is not None:
            os.kill(child, signal.SIGKILL)


# ---- 3. results held do not cost descriptors or mappings each ------------------------------------------------


@pytest.mark.timeout(240)
def test_held_results_under_low_nofile_limit(start_method: str) -> None:
    pytest.importorskip("numpy")
    # 2,000 results of 300 KiB (600 MB): each once cost a descriptor in the parent and two in a worker.
    out = run_script("held_results", start_method, "2000", str(300 << 10), timeout=200)
    assert out["ok"] is True
    fds_before, fds_after = out["fds"]
    maps_before, maps_after = out["maps"]
    assert fds_after - fds_before < 80, out
    assert maps_after - maps_before < 200, out
    assert max(out["worker_fds"]) < 200, out


def test_out_of_descriptors_error_names_the_limit() -> None:
    out = run_script("segment_at_limit")
    assert out["errno"] == 24  # EMFILE
    assert "RLIMIT_NOFILE soft limit 64" in str(out["error"]) and "ulimit -n" in str(out["error"])


# ---- 4. the current directory is not on a new interpreter's sys.path ---------------------------------------


@pytest.mark.timeout(90)
def test_current_directory_not_imported_by_new_interpreters(start_method: str, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    for name in ("struct", "json", "select"):
        (run_dir / f"{name}.py").write_text(
            f"import os\nopen(os.path.join({str(tmp_path)!r}, 'imported-{name}-' + str(os.getpid())), 'w')\n"
        )
    script = tmp_path / "user.py"
    script.write_text(
        "import manycore\n"
        "if __name__ == '__main__':\n"
        f"    with manycore.Pool(2, start_method={start_method!r}) as pool:\n"
        "        print(pool.map(abs, [-1, -2, -3]))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=run_dir, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2, 3]"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("imported")) == []
    assert not marker.exists()


# ---- 5. nested pools default to the worker's share of the cores ---------------------------------------------


def test_nested_pool_defaults_to_worker_share(start_method: str) -> None:
    cores = cpu_count()
    with manycore.Pool(2, start_method=start_method) as pool:
        sizes = pool.map(fd_tasks.nested_pool_size, range(2), chunksize=1)
    assert sizes == [max(1, cores // 2)] * 2


MANY_FDS = """
import os, resource, sys
import manycore
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard != resource.RLIM_INFINITY and hard < 2048:
    print("SKIP hard limit", hard)
    sys.exit(0)
resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # every later descriptor is above 1023
with manycore.Pool(2, start_method=sys.argv[1]) as pool:
    print(pool.apply(abs, (-3,)), pool.map(abs, [-1, -2]), pool.apply_async(abs, (-4,)).get(30))
print("closed")
"""


@pytest.mark.needs("poll")  # select() takes no descriptor above 1023 on Linux
@pytest.mark.timeout(90)
def test_a_program_holding_over_1024_descriptors(start_method: str) -> None:
    """select() refuses descriptors above 1023 (FD_SETSIZE): the fork server, a blocking apply's wait and the
    shutdown's wait for EOF must not use it (found by an audit: the pool reported its fork server dead)."""
    done = subprocess.run(
        [sys.executable, "-c", MANY_FDS, start_method], capture_output=True, text=True, timeout=80
    )
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("SKIP"):
        pytest.skip(f"RLIMIT_NOFILE's hard limit is too low here: {done.stdout}")
    assert done.stdout.splitlines() == ["3 [1, 2] 4", "closed"]
