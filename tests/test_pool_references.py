"""A Pool that only its results refer to stays alive until they are finished, as multiprocessing's does.

``def f(): p = Pool(2); return p.imap(...)`` drops the last reference to the pool when ``f`` returns; its
results must still all come (multiprocessing's result objects hold their pool). Once finished, they let go of
it, so a pool left open is still collected, warned about and terminated even while its results are kept.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(90)

CALLS = {
    "imap": ("list(r)", "p.imap(slow, range(-1, -51, -1), chunksize=1)"),
    "imap_unordered": ("sorted(r)", "p.imap_unordered(slow, range(-1, -51, -1))"),
    "istarmap": ("list(r)", "p.istarmap(slow_pow, [(x, 1) for x in range(1, 51)])"),
    "map_async": ("r.get(30)", "p.map_async(slow, range(-1, -51, -1), chunksize=1)"),
    "starmap_async": ("r.get(30)", "p.starmap_async(slow_pow, [(x, 1) for x in range(1, 51)])"),
    "apply_async": ("list(range(1, r.get(30) + 1))", "p.apply_async(slow_len, (range(50),))"),
}
WARNING = "ResourceWarning: unclosed running multiprocessing pool"


def run_script(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "PYTHONUNBUFFERED")},
    )


@pytest.mark.parametrize("call", list(CALLS))
def test_results_keep_their_pool_alive_until_finished(start_method: str, call: str) -> None:
    consume, make = CALLS[call]
    proc = run_script(
        f"""
        import gc, time, warnings, weakref, manycore
        warnings.simplefilter("always")
        pools = []
        # Slow enough that no result is in before the pool's last reference goes (when results() returns).
        def slow(x):
            time.sleep(0.005)
            return abs(x)
        def slow_pow(x, y):
            time.sleep(0.005)
            return pow(x, y)
        def slow_len(x):
            time.sleep(0.3)
            return len(x)
        def results():
            p = manycore.Pool(2, start_method={start_method!r})
            pools.append(weakref.ref(p))
            return {make}
        r = results()
        gc.collect()
        values = {consume}
        print(len(values), values == list(range(1, 51)), flush=True)
        # Finished, and still held: the results no longer keep the pool, which is collected (and warns).
        deadline = time.monotonic() + 20
        while pools[0]() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        print("collected" if pools[0]() is None else "still alive", flush=True)
        """
    )
    assert proc.stdout.split() == ["50", "True", "collected"], proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(WARNING) == 1, proc.stderr


@pytest.mark.parametrize("keep", [True, False])
def test_pool_held_by_pending_results_is_terminated_at_exit_and_warns(start_method: str, keep: bool) -> None:
    # The exit hook fails the pending results, which let go of their pool: collected then, it still warns, as
    # a pool left open does, whether or not the program holds the results.
    proc = run_script(
        f"""
        import time, warnings, manycore
        warnings.simplefilter("always")
        def results():
            p = manycore.Pool(1, start_method={start_method!r})
            return p.apply_async(time.sleep, (30,))
        {"r = results()" if keep else "results()"}
        it = manycore.Pool(1, start_method={start_method!r}).imap(time.sleep, [30, 30])
        time.sleep(0.5)
        print("exiting", flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["exiting"], proc.stderr
    assert proc.stderr.count(WARNING) == 2, proc.stderr
