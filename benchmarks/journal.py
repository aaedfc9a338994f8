#!/usr/bin/env python3
"""What a journal costs: W1 and W2 (benchmarks/README.md) on one pool, with and without ``journal=``.

    python benchmarks/journal.py [--repeats 5] [--workers 2]

W1: ``pool.map(square, range(1_000_000))``, items/s (target with a journal: >= 1M items/s). W2: 200 items of
10 ms of CPU time each (``cpu_burn``), wall seconds (target: with a journal <= 1.03x without). Each repeat runs
both variants back to back, in alternating order, on the same warm pool (a VM's clock speed drifts over
minutes; pairing cancels it); every journaled run starts from a fresh file. Prints the medians and the median of
the per-repeat ratios, and "resumed": the same W1 call again on the complete journal (nothing computed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
sys.path.insert(0, HERE)

import manycore  # noqa: E402

import workloads  # noqa: E402


def _timed(fn: object, *args: object, **kwargs: object) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    n = 1_000_000
    burns = [0.010] * 200
    w1: dict[str, list[float]] = {"plain": [], "journal": [], "resumed": []}
    w2: dict[str, list[float]] = {"plain": [], "journal": []}
    with tempfile.TemporaryDirectory() as tmp, manycore.Pool(args.workers) as pool:
        pool.map(workloads.square, range(10_000))
        for repeat in range(args.repeats):
            order = ["plain", "journal"] if repeat % 2 == 0 else ["journal", "plain"]
            for variant in order:
                db = os.path.join(tmp, f"w1-{repeat}.db")
                extra = {"journal": db} if variant == "journal" else {}
                w1[variant].append(n / _timed(pool.map, workloads.square, range(n), **extra))
                if variant == "journal":
                    w1["resumed"].append(n / _timed(pool.map, workloads.square, range(n), journal=db))
            for variant in order:
                extra = {"journal": os.path.join(tmp, f"w2-{repeat}.db")} if variant == "journal" else {}
                w2[variant].append(_timed(pool.map, workloads.cpu_burn, burns, **extra))
    ratios_w1 = [j / p for j, p in zip(w1["journal"], w1["plain"])]
    ratios_w2 = [j / p for j, p in zip(w2["journal"], w2["plain"])]
    print(f"{args.workers} workers, {args.repeats} repeats, Python {sys.version.split()[0]}")
    print(
        f"W1 items/s: plain {statistics.median(w1['plain']) / 1e6:.2f}M, journal"
        f" {statistics.median(w1['journal']) / 1e6:.2f}M (target >= 1M), resumed"
        f" {statistics.median(w1['resumed']) / 1e6:.2f}M; journal/plain {statistics.median(ratios_w1):.2f}"
    )
    print(
        f"W2 wall s: plain {statistics.median(w2['plain']):.3f}, journal {statistics.median(w2['journal']):.3f};"
        f" journal/plain {statistics.median(ratios_w2):.3f} [{min(ratios_w2):.3f}-{max(ratios_w2):.3f}]"
        " (target <= 1.03)"
    )


if __name__ == "__main__":
    main()
