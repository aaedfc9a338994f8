"""Races between a pool that forks its workers (start_method="fork") and other pools of the same program.

A worker forked by one pool's supervisor thread copies whatever the program's other threads hold at that instant:
an internal pipe of a ``subprocess.Popen`` that is starting another pool's fork server (the ``Popen`` then waited
for as long as that worker lived: seen in benchmarks/soak.py), and descriptor numbers that another pool had just
closed and the forking pool had just reused (the worker's fork hook closed them again: its own status page,
EBADF, 1 in 3 runs of the script below before the fix). Real pools, real forks, no mocks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import sys, threading
import manycore

stop = threading.Event()

def churn():
    # Workers forked one after another (one task each) from this pool's supervisor thread.
    with manycore.Pool(2, start_method="fork", maxtasksperchild=1) as pool:
        while not stop.is_set():
            pool.map(abs, range(-20, 0), chunksize=1)

thread = threading.Thread(target=churn)
thread.start()
try:
    for _ in range(int(sys.argv[1])):
        # Each: a fork server started with subprocess, then the pool's descriptors closed.
        with manycore.Pool(1) as pool:
            assert pool.apply(abs, (-1,)) == 1
finally:
    stop.set()
    thread.join()
print("ok")
"""


@pytest.mark.needs("fork")
@pytest.mark.timeout(150)
def test_pools_opened_and_closed_while_another_forks_workers(tmp_path: Path) -> None:
    script = tmp_path / "churn.py"
    script.write_text(SCRIPT)
    # -W ignore: Python 3.12+ warns that forking a process with threads may deadlock (that is the point here).
    out = subprocess.run(
        [sys.executable, "-W", "ignore", str(script), "60"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
