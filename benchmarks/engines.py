"""manycore on Dask and Ray against each engine's own map, for W1 (tiny items) and W2 (CPU-bound).

    python benchmarks/engines.py [--repeats 3] [--engines dask,ray]

One local cluster per engine, 2 worker processes of 1 thread each (Dask: LocalCluster on loopback; Ray: a
local runtime with 2 CPUs and no dashboard), warm before timing. Each figure is the median of the repeats,
with min and max; ratios compare manycore with the engine's own map in the same run. Every timing starts
on an idle machine (no CPU busy with the engine's clean-up of the previous one):

- Dask: ``client.gather(client.map(f, items))``, one task per item (Dask's documented map);
- Ray: ``ray.util.multiprocessing.Pool.map`` (Ray's drop-in Pool, with its own default chunking).

W2 also runs as items that each burn exactly 10 ms of CPU time (``workloads.cpu_burn``): the cores of the shared VM
change clock speed from one moment to the next, which moves busy-loop items by up to 2x, not CPU-time ones.

W1 runs over 20,000 items rather than the 1,000,000 of benchmarks/README.md: one task per item at Dask's milliseconds of
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


MapFn = Callable[[Callable[[Any], Any], list[Any]], Any]


def measure(
    out: dict[str, dict[str, list[float]]],
    library: str,
    map_fn: MapFn,
    inputs: dict[str, tuple[Callable[[Any], Any], list[Any]]],
    settle: Callable[[], None] | None = None,
) -> None:
    """Time ``map_fn(fn, items)`` once per workload and add the walls to ``out[library]``; ``settle`` runs
    before each clock starts (Dask: wait until the scheduler is idle)."""
    for workload, (fn, items) in inputs.items():
        if settle is not None:
            settle()
        start = time.perf_counter()
        map_fn(fn, items)
        out.setdefault(library, {}).setdefault(workload, []).append(time.perf_counter() - start)


def workload_inputs(iterations: int) -> dict[str, tuple[Callable[[Any], Any], list[Any]]]:
    """Each workload's function and items: W1 tiny items, W2 busy loops of ~10 ms, and W2 again as items of
    exactly 10 ms of CPU time."""
    return {
        "W1": (square, list(range(W1_ITEMS))),
        "W2": (spin, [iterations] * W2_ITEMS),
        "W2cpu": (cpu_burn, [0.010] * W2_ITEMS),
    }


def cpu_busy(interval: float = 0.2) -> float:
    """The machine's CPU use over ``interval`` seconds, 0 to 1 (Linux: /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    total, idle = sample()
    time.sleep(interval)
    total2, idle2 = sample()
    return 1.0 - (idle2 - idle) / max(1, total2 - total)


def wait_for_idle_cpu(limit: float = 0.1, timeout: float = 10.0) -> None:
    """Wait until the engine's background work is over: closing a Ray pool kills its actors, and Ray then
    starts spare worker processes, seconds of CPU that would land on whichever timing comes next."""
    if not os.path.exists("/proc/stat"):
        time.sleep(1.0)
        return
    deadline = time.monotonic() + timeout
    while cpu_busy() > limit and time.monotonic() < deadline:
        pass


def _scheduler_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]"


def run_dask(repeats: int, iterations: int) -> dict[str, dict[str, list[float]]]:
    import dask
    import distributed

    out: dict[str, dict[str, list[float]]] = {}
    tmp = tempfile.mkdtemp(prefix="manycore-dask-bench-")  # Dask's scratch space, removed after
    try:
        with (
            dask.config.set({"temporary-directory": tmp}),
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
            inputs = workload_inputs(iterations)

            def settle() -> None:
                """Wait until the scheduler has forgotten every earlier task: releasing 20,000 W1 tasks keeps
                it busy for seconds, which would slow whatever runs next on these 2 cores."""
                deadline = time.monotonic() + 60
                while client.run_on_scheduler(_scheduler_tasks) and time.monotonic() < deadline:
                    time.sleep(0.1)
                wait_for_idle_cpu()

            with manycore.Pool(backend="dask") as pool:
                pool.map(square, range(10))
                # Interleaved repeats: the machine's speed drifts over minutes, and both sides should see the
                # same.
                for _ in range(repeats):
                    measure(
                        out,
                        "client.map",
                        lambda f, xs: client.gather(client.map(f, xs, pure=False)),
                        inputs,
                        settle,
                    )
                    measure(out, "manycore", pool.map, inputs, settle)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
        inputs = workload_inputs(iterations)
        # Interleaved repeats, each on a freshly started (and warmed) pool: both pools cannot be open at once,
        # since each holds an actor per CPU, and the machine's speed drifts over minutes.
        for _ in range(repeats):
            with RayPool(processes=2) as ray_pool:
                ray_pool.map(square, range(10))
                measure(out, "ray Pool.map", ray_pool.map, inputs, wait_for_idle_cpu)
            with manycore.Pool(backend="ray") as pool:
                pool.map(square, range(10))
                measure(out, "manycore", pool.map, inputs, wait_for_idle_cpu)
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
