#!/usr/bin/env python3
"""100 consecutive ``manycore.map(f, range(10))`` calls against the same loop on one ``multiprocessing.Pool``.

    python benchmarks/map_loop.py [--calls 100] [--items 10] [--workers 2] [--repeats 3]

The one-call helper reuses one process-wide pool, so the loop pays one pool start, not one per call. The
peer is the fastest way to write that loop with the standard library: one ``multiprocessing.Pool`` (fork),
created once, before the clock, with ``map(f, range(10))`` per call. Each side runs in a fresh interpreter (so
manycore's first call, which starts its pool, is on the clock, and the peer's pool start is not), the repeats
interleaved; the figure is the median wall time of the loop. Prints both medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

SRC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

CHILD = """
import sys, time
calls, items, workers = map(int, sys.argv[2:5])

def f(x):
    return x * x

if sys.argv[1] == "manycore":
    import manycore
    manycore.map  # the import of the helper, as the peer's module is imported: not the measured loop
    started = time.perf_counter()
    for _ in range(calls):
        out = manycore.map(f, range(items), workers=workers)
    elapsed = time.perf_counter() - started
else:
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        started = time.perf_counter()
        for _ in range(calls):
            out = pool.map(f, range(items))
        elapsed = time.perf_counter() - started
assert out == [x * x for x in range(items)], out
print(elapsed)
"""


def run(side: str, calls: int, items: int, workers: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC_DIR, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, side, str(calls), str(items), str(workers)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"manycore": [], "mp-fork": []}
    for _ in range(args.repeats):
        for side in times:
            times[side].append(run(side, args.calls, args.items, args.workers))
    mc, mp = (statistics.median(times[side]) for side in times)
    print(f"{args.calls} x map(f, range({args.items})), {args.workers} workers, median of {args.repeats}:")
    print(f"  manycore.map (one process-wide pool, its start included): {mc:.3f} s  {times['manycore']}")
    print(f"  multiprocessing.Pool (fork), created once, not timed:    {mp:.3f} s  {times['mp-fork']}")
    print(f"  ratio: {mc / mp:.2f}x")


if __name__ == "__main__":
    main()
