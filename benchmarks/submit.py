"""10,000 ``submit`` calls then ``as_completed``: concurrent.futures.ProcessPoolExecutor against manycore.Executor.

Usage: python benchmarks/submit.py [--n 10000] [--workers 2] [--repeats 3]

Both executors are started and warmed up (every worker has run a task) before the clock starts, so the figure is
the cost of submitting and collecting, not of starting processes. Prints each library's best wall time, its
submit phase alone, and the ratio manycore / stdlib (lower is better; the target is <= 1).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import manycore


def task(x: int) -> int:
    return x + 1


def run_once(ex: concurrent.futures.Executor, n: int) -> tuple[float, float]:
    start = time.perf_counter()
    futures = [ex.submit(task, i) for i in range(n)]
    submitted = time.perf_counter() - start
    total = sum(f.result() for f in concurrent.futures.as_completed(futures))
    wall = time.perf_counter() - start
    assert total == n * (n + 1) // 2, total
    return wall, submitted


def measure(make: Callable[[], Any], n: int, workers: int, repeats: int) -> tuple[float, float]:
    with make() as ex:
        list(ex.map(task, range(workers * 4)))  # workers started and warm
        runs = [run_once(ex, n) for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("forkserver")
    stdlib = measure(
        lambda: concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=ctx),
        args.n,
        args.workers,
        args.repeats,
    )
    ours = measure(lambda: manycore.Executor(args.workers), args.n, args.workers, args.repeats)
    print(f"{args.n:,} submits + as_completed, {args.workers} workers, best of {args.repeats}")
    print(f"  concurrent.futures.ProcessPoolExecutor: {stdlib[0]:.3f} s (submit phase {stdlib[1]:.3f} s)")
    print(f"  manycore.Executor:                      {ours[0]:.3f} s (submit phase {ours[1]:.3f} s)")
    print(f"  ratio manycore / stdlib: {ours[0] / stdlib[0]:.2f}x")


if __name__ == "__main__":
    main()
