"""manycore demo: the tutorial example, then a CPU-bound workload against a serial loop and multiprocessing.

Run: python examples/demo.py   (uses the local process backend, all cores)
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import time

import manycore


def square(x: int) -> int:
    return x * x


def cpu_bound(n: int) -> int:
    """About 10 ms of pure-Python arithmetic."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def timed(label: str, fn: object, *args: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)  # type: ignore[operator]
    elapsed = time.perf_counter() - start
    print(f"  {label:<28} {elapsed:8.3f} s")
    return elapsed, result


def main() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"manycore {manycore.__version__} on Python {platform.python_version()}, {cores} cores\n")

    print("Tutorial example:")
    with manycore.Pool(processes=4) as pool:
        print(" ", pool.map(square, [1, 2, 3, 4, 5]))

    # Calibrate the item cost to about 10 ms on this machine.
    n = 20_000
    start = time.perf_counter()
    cpu_bound(n)
    n = max(1000, int(n * 0.010 / (time.perf_counter() - start)))
    items = [n] * 200

    print(f"\nCPU-bound: {len(items)} items of about 10 ms, {cores} workers")
    t_serial, expected = timed("serial loop", lambda: [cpu_bound(x) for x in items])
    with multiprocessing.Pool(cores) as mp_pool:
        mp_pool.map(square, range(cores))  # start the workers outside the timing
        t_mp, got_mp = timed("multiprocessing.Pool.map", mp_pool.map, cpu_bound, items)
    with manycore.Pool(cores) as pool:
        pool.map(square, range(cores))
        t_mc, got_mc = timed("manycore.Pool.map", pool.map, cpu_bound, items)
    assert got_mp == expected and got_mc == expected

    print(
        f"\n  manycore speed-up over the serial loop:        {t_serial / t_mc:5.2f}x  (limit: {cores} cores)"
    )
    print(f"  manycore speed-up over multiprocessing.Pool:   {t_mp / t_mc:5.2f}x")

    print("\nTiny items: x * x over range(1_000_000)")
    with multiprocessing.Pool(cores) as mp_pool:
        mp_pool.map(square, range(cores))
        t_mp, _ = timed("multiprocessing.Pool.map", mp_pool.map, square, range(1_000_000))
    with manycore.Pool(cores) as pool:
        pool.map(square, range(cores))
        t_mc, _ = timed("manycore.Pool.map", pool.map, square, range(1_000_000))
    print(f"\n  manycore items/s: {1e6 / t_mc / 1e6:.2f} M   multiprocessing: {1e6 / t_mp / 1e6:.2f} M")


if __name__ == "__main__":
    main()
