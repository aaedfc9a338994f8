"""manycore on Dask and Ray against each engine's own map, for W1 (tiny items) and W2 (CPU-bound).

    python benchmarks/engines.py [--repeats 3] [--engines dask,ray]

One local cluster per engine, 2 worker processes of 1 thread each (Dask: LocalCluster on loopback; Ray: a
local runtime with 2 CPUs and no dashboard), warm before timing. Each figure is the median of the repeats,
with min and max; ratios compare manycore with the engine's own map in the same run:

- Dask: ``client.gather(client.map(f, items))``, one task per item (Dask's documented map);
- Ray: ``ray.util.multiprocessing.Pool.map`` (Ray's drop-in Pool, with its own default chunking).

W2 also runs as items that each burn exactly 10 ms of CPU time (``workloads.cpu_burn``): the cores of the shared VM
change clock speed from one moment to the next, which moves busy-loop items by up to 2x, not CPU-time ones.

W1 runs over 20,000 items rather than BENCHMARKS.md's 1,000,000: one task per item at Dask's milliseconds of
overhead would take minutes; items/s is the figure either way.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import manycore

from workloads import cpu_burn, spin, square

W1_ITEMS = 20_000
W2_ITEMS = 200


def calibrate() -> int:
    """Iterations of spin() that take about 10 ms here."""
    n = 100_000
    start = time.perf_counter()
    spin(n)
    return max(1000, int(n * 0.010 / (time.perf_counter() - start)))


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    return walls


def timed_after(
    settle: Callable[[Callable[[], Any]], Callable[[], Any]], fn: Callable[[], Any]
) -> list[float]:
    """One timing of fn, with the clock started after ``settle`` has waited for the engine to go idle."""
    walls: list[float] = []

    def clocked() -> None:
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)

    settle(clocked)()
    return walls


def _scheduler_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def add(out: dict[str, dict[str, list[float]]], library: str, figures: dict[str, list[float]]) -> None:
    for workload, walls in figures.items():
        out.setdefault(library, {}).setdefault(workload, []).extend(walls)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]"


def run_dask(repeats: int, iterations: int) -> dict[str, dict[str, list[float]]]:
    import distributed

    out: dict[str, dict[str, list[float]]] = {}
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.gather(client.map(square, range(10)))
        w1, w2, w2cpu = range(W1_ITEMS), [iterations] * W2_ITEMS, [0.010] * W2_ITEMS

        def settled(fn: Callable[[], Any]) -> Callable[[], Any]:
            """fn, run once the scheduler has forgotten every earlier task: releasing 20,000 W1 tasks keeps
            it busy for seconds, which would slow whatever runs next on these 2 cores."""

            def run() -> Any:
                deadline = time.monotonic() + 60
                while client.run_on_scheduler(_scheduler_tasks) and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(0.2)
                return fn()

            return run

        with manycore.Pool(backend="dask") as pool:
            pool.map(square, range(10))
            # Interleaved repeats: the machine's speed drifts over minutes, and both sides should see the same.
            for _ in range(repeats):
                add(
                    out,
                    "client.map",
                    {
                        "W1": timed_after(settled, lambda: client.gather(client.map(square, w1, pure=False))),
                        "W2": timed_after(settled, lambda: client.gather(client.map(spin, w2, pure=False))),
                        "W2cpu": timed_after(
                            settled, lambda: client.gather(client.map(cpu_burn, w2cpu, pure=False))
                        ),
                    },
                )
                add(
                    out,
                    "manycore",
                    {
                        "W1": timed(lambda: pool.map(square, w1), 1),
                        "W2": timed(lambda: pool.map(spin, w2), 1),
                        "W2cpu": timed(lambda: pool.map(cpu_burn, w2cpu), 1),
                    },
                )
    return out


def run_ray(repeats: int, iterations: int) -> dict[str, dict[str, list[float]]]:
    # A loopback-only, throw-away runtime: no auth token (Ray writes one to ~/.ray) and no usage stats.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    from ray.util.multiprocessing import Pool as RayPool

    tmp = tempfile.mkdtemp(prefix="manycore-ray-bench-")
    here = os.path.dirname(os.path.abspath(__file__))
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=tmp,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": here}},
    )
    out: dict[str, dict[str, list[float]]] = {}
    try:
        w1, w2, w2cpu = list(range(W1_ITEMS)), [iterations] * W2_ITEMS, [0.010] * W2_ITEMS
        # Interleaved repeats, each on a freshly started (and warmed) pool: both pools cannot be open at once,
        # since each holds an actor per CPU, and the machine's speed drifts over minutes.
        for _ in range(repeats):
            with RayPool(processes=2) as ray_pool:
                ray_pool.map(square, range(10))
                add(
                    out,
                    "ray Pool.map",
                    {
                        "W1": timed(lambda: ray_pool.map(square, w1), 1),
                        "W2": timed(lambda: ray_pool.map(spin, w2), 1),
                        "W2cpu": timed(lambda: ray_pool.map(cpu_burn, w2cpu), 1),
                    },
                )
            with manycore.Pool(backend="ray") as pool:
                pool.map(square, range(10))
                add(
                    out,
                    "manycore",
                    {
                        "W1": timed(lambda: pool.map(square, w1), 1),
                        "W2": timed(lambda: pool.map(spin, w2), 1),
                        "W2cpu": timed(lambda: pool.map(cpu_burn, w2cpu), 1),
                    },
                )
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def report(engine: str, results: dict[str, dict[str, list[float]]], iterations: int) -> None:
    print(f"\n## {engine}\n")
    print("| library | W1 items/s | W2 wall s (200 x ~10 ms) | W2, items of 10 ms CPU time: wall s |")
    print("|---|---|---|---|")
    for library, walls in results.items():
        rates = [W1_ITEMS / w for w in walls["W1"]]
        print(f"| {library} | {summary(rates)} | {summary(walls['W2'])} | {summary(walls['W2cpu'])} |")
    peer = next(name for name in results if name != "manycore")
    mine, theirs = results["manycore"], results[peer]
    w1 = statistics.median(theirs["W1"]) / statistics.median(mine["W1"])
    w2 = statistics.median(theirs["W2"]) / statistics.median(mine["W2"])
    w2cpu = statistics.median(theirs["W2cpu"]) / statistics.median(mine["W2cpu"])
    print(
        f"\nmanycore / {peer}: W1 {w1:.1f}x the items/s; W2 {w2:.2f}x as fast, with items of 10 ms CPU time "
        f"{w2cpu:.2f}x (above 1 = manycore faster)"
    )
    # W2's floor: the items' serial time (~10 ms each; exactly 10 ms of CPU in the variant) over 2 workers.
    print(f"W2 ideal wall (200 x 10 ms / 2 workers): {W2_ITEMS * 0.010 / 2:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", default="dask,ray")
    args = parser.parse_args()
    iterations = calibrate()
    print("# manycore on Dask and Ray\n")
    print(f"- command: `python {' '.join(sys.argv)}`")
    print(
        f"- machine: {os.cpu_count()} cores, Python {platform.python_version()}, manycore {manycore.__version__}"
    )
    print(
        f"- 2 workers of 1 thread; W1 over {W1_ITEMS:,} items; W2 item = {iterations:,} spin iterations (~10 ms)"
    )
    runners = {"dask": run_dask, "ray": run_ray}
    for engine in args.engines.split(","):
        try:
            report(engine, runners[engine](args.repeats, iterations), iterations)
        except ImportError as exc:
            print(f"\n## {engine}\n\nnot installed: {exc}")


if __name__ == "__main__":
    main()
