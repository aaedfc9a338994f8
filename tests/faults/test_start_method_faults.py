"""A subset of the fault tests on the other start methods ("fork", "spawn"): one crash, one timeout, a dead
worker inside a chunk, Ctrl-C and the parent SIGKILLed. (The full matrix runs on the default, "forkserver".)"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from . import tasks
from .common import check_fault_error, check_others, make_executor, make_pool
from .test_fault_matrix import run_with_fault
from .test_process_faults import interrupt_script, parent_kill

# Forking a process that runs threads (manycore's supervisor is one) warns on Python 3.12+.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

METHODS = ["fork", "spawn"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("entry", "kind"),
    [("map", "sigkill"), ("imap_unordered", "segfault"), ("apply_async", "timeout"), ("submit", "exit")],
)
def test_fault(method: str, entry: str, kind: str, no_orphans: set[int]) -> None:
    run_with_fault(entry, kind, start_method=method)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_chunked_crash_and_timeout(method: str, no_orphans: set[int]) -> None:
    """40 items in chunks of 10: one SIGKILL, then one timeout; each fails alone and the rest arrive.

    The items pause 1 ms: cheaper ones may be tracked in blocks once the first chunk has measured them, and a
    crash then fails its whole block (tests/faults/test_at_most_once.py covers that). On a loaded machine the
    second chunk can leave after the first came back, so without the pause the outcome depends on timing."""
    with make_pool(method) as pool:
        out = pool.map_async(
            partial(tasks.faulty, kind="sigkill", bad=17, pause=1e-3),
            range(40),
            chunksize=10,
            on_error="return",
        ).get(30)
        (err,) = check_others("map", out, bad=17, n=40)
        check_fault_error("sigkill", err, "map", bad=17)
        out = pool.map_async(
            partial(tasks.faulty, kind="timeout", bad=22),
            range(40),
            chunksize=10,
            on_error="return",
            task_timeout=tasks.TIMEOUT,
        ).get(30)
        (err,) = check_others("map", out, bad=22, n=40)
        check_fault_error("timeout", err, "map", bad=22)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_retry_after_crash(method: str, tmp_path: Path, no_orphans: set[int]) -> None:
    fn = partial(tasks.fault_once, kind="sigkill", bad=3, marker_dir=str(tmp_path))
    with make_executor(method, retries=1) as ex:
        assert [ex.submit(fn, x).result(30) for x in range(6)] == [x * x for x in range(6)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_ctrl_c(method: str, tmp_path: Path, no_orphans: set[int]) -> None:
    interrupt_script("map", method, tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_parent_sigkilled(method: str, tmp_path: Path, no_orphans: set[int]) -> None:
    parent_kill("pool", method, tmp_path)
