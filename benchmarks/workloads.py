"""Task functions, per-library runners and the workloads W1..W10 (defined in benchmarks/README.md).

Everything a worker has to unpickle lives in this module, never in ``__main__``, so that spawn-based
peers (loky, joblib) import it by name like the fork-based ones inherit it.

Only light standard-library modules are imported at module level: a spawned worker imports this module on
its first task, and pulling numpy (or even dataclasses and statistics) in here would bill loky and joblib
for it in the cold-start workload W6. numpy and the pool libraries are imported where they are used.
"""

from __future__ import annotations

import abc
import math
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]

MIB = 1024 * 1024
GB = 1e9  # GB/s figures use decimal gigabytes, as the memory speeds quoted in benchmarks/README.md
ARRAY_16MIB_ITEMS = 16 * MIB // 8
ARRAY_256MIB_ITEMS = 256 * MIB // 8
WARM_UP_SECONDS = 0.02


# --------------------------------------------------------------------------------------------------------
# Task functions (run in the workers).
# --------------------------------------------------------------------------------------------------------


def noop() -> None:
    return None


def fast_or_slow(x: int) -> int:
    """W10's item: item 1 sleeps 2 s, every other one 10 ms (sleeps: the cores stay free for the others)."""
    time.sleep(2.0 if x == 1 else 0.010)
    return x


def square(x: int) -> int:
    return x * x


def spin(iterations: int) -> int:
    """Pure-Python CPU work (W2): holds the GIL the whole time, like real Python code does."""
    total = 0
    for i in range(iterations):
        total += i & 7
    return total


def busy_wait(seconds: float) -> float:
    """Burn CPU for `seconds` of wall time (W3, warm-up): exact durations, whatever the machine's speed."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def cpu_burn(seconds: float) -> float:
    """Burn `seconds` of this thread's CPU time (W2's fixed-work variant): the same work whatever the clock
    speed of the core, and time spent descheduled (another process on the core) does not count as work."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return seconds


def array_sum(array: FloatArray) -> float:
    return float(array.sum())


def make_array(seed: int) -> FloatArray:
    """A new 16 MiB float64 array whose every item is `seed` (W4b)."""
    import numpy as np

    return np.full(ARRAY_16MIB_ITEMS, float(seed))


_INSTALLED: FloatArray | None = None


def install_array(array: FloatArray) -> None:
    """Pool initializer (W8): keep the broadcast array in the worker for sum_installed_slice."""
    global _INSTALLED
    _INSTALLED = array


def sum_installed_slice(bounds: tuple[int, int]) -> float:
    if _INSTALLED is None:
        raise RuntimeError("install_array() did not run in this worker")
    start, stop = bounds
    return float(_INSTALLED[start:stop].sum())


def sum_slice(array: FloatArray, start: int, stop: int) -> float:
    return float(array[start:stop].sum())


# --------------------------------------------------------------------------------------------------------
# Runners: one per library, each used the way its documentation shows.
# --------------------------------------------------------------------------------------------------------

Initializer: TypeAlias = Callable[..., None] | None


class Runner(abc.ABC):
    """The few pool operations the workloads need, implemented once per library.

    `chunksize` arguments carry the value a user tuning this workload would pass to a library whose default
    is 1 (PPE, loky, pebble). Libraries with their own automatic chunking (multiprocessing's heuristic,
    mpire, joblib's batch_size="auto", manycore's "auto") ignore it: their default is what we measure.
    """

    # How W8 hands its array over (reported with W8's figures).
    w8_mode = "initializer"

    def __init__(self) -> None:
        self.workers = 0

    @abc.abstractmethod
    def open(self, workers: int, initializer: Initializer = None, initargs: tuple[Any, ...] = ()) -> None: ...

    @abc.abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        """Ordered, complete results of fn over items."""

    @abc.abstractmethod
    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        """The library's lazy (or least eager) ordered map."""

    @abc.abstractmethod
    def call(self, fn: Callable[[], Any]) -> Any:
        """One submitted task, awaited."""

    @abc.abstractmethod
    def close(self) -> None:
        """Graceful shutdown that waits for the workers; safe to call twice or after a failed open."""

    @abc.abstractmethod
    def submit_all(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """W9: one task per item, each submitted on its own (futures or async results), then every result
        read (in completion order where the library has it)."""

    @abc.abstractmethod
    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        """W10: results in completion order, one item per task where the library lets one choose."""

    def warm_up(self) -> None:
        # Tasks that last a little so every worker takes one: all are started and have imported this module.
        self.map(busy_wait, [WARM_UP_SECONDS] * self.workers, 1)

    # W8 protocol: prepare_shared() runs before the clock, share() and sum_slices() inside it. Libraries
    # that take the array at pool creation create the pool in share(), so their start-up is timed; those
    # that take it later (joblib, manycore's broadcast) get a warm pool in prepare_shared().
    def prepare_shared(self, workers: int) -> None:
        self.workers = workers

    def share(self, array: FloatArray) -> None:
        self.open(self.workers, install_array, (array,))

    def sum_slices(self, bounds: list[tuple[int, int]]) -> list[float]:
        return self.map(sum_installed_slice, bounds, 1)


class SerialRunner(Runner):
    """The baseline: a plain loop in the calling process."""

    w8_mode = "in process"

    def open(self, workers: int, initializer: Initializer = None, initargs: tuple[Any, ...] = ()) -> None:
        self.workers = workers
        if initializer is not None:
            initializer(*initargs)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        return list(map(fn, items))

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        return map(fn, items)

    def call(self, fn: Callable[[], Any]) -> Any:
        return fn()

    def submit_all(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return [fn(item) for item in items]

    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        return map(fn, items)

    def close(self) -> None:
        return None

    def warm_up(self) -> None:
        return None


class MultiprocessingRunner(Runner):
    """multiprocessing.Pool with its own chunksize heuristic (len / (4 * workers)) for map."""

    def __init__(self, start_method: str | None = None) -> None:
        super().__init__()
        self._start_method = start_method
        self._pool: Any = None

    def _make_pool(self, workers: int, initializer: Initializer, initargs: tuple[Any, ...]) -> Any:
        import multiprocessing

        context = multiprocessing.get_context(self._start_method)
        return context.Pool(workers, initializer=initializer, initargs=initargs)

    def open(self, workers: int, initializer: Initializer = None, initargs: tuple[Any, ...] = ()) -> None:
        self.workers = workers
        self._pool = self._make_pool(workers, initializer, initargs)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        return list(self._pool.map(fn, items))

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        # multiprocessing's imap default chunksize is 1 (one pipe message per item); its docs advise a
        # large chunksize for long iterables, so W7 passes 1000, like the other peers that take one.
        return iter(self._pool.imap(fn, items, chunksize=chunksize))

    def call(self, fn: Callable[[], Any]) -> Any:
        return self._pool.apply(fn)

    def submit_all(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        pending = [self._pool.apply_async(fn, (item,)) for item in items]
        return [result.get() for result in pending]

    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        return iter(self._pool.imap_unordered(fn, items))  # chunksize 1 for mp; manycore: its "auto"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


class ManycoreRunner(MultiprocessingRunner):
    """manycore.Pool, the drop-in: map/imap/starmap are called WITHOUT chunksize so its "auto" is measured."""

    def __init__(self, start_method: str | None = None) -> None:
        super().__init__()
        self._handle: Any = None
        self._manycore_start_method = start_method  # None: manycore's default

    def _make_pool(self, workers: int, initializer: Initializer, initargs: tuple[Any, ...]) -> Any:
        import manycore

        method = self._manycore_start_method
        if initializer is None:
            return manycore.Pool(processes=workers, start_method=method)
        return manycore.Pool(
            processes=workers, initializer=initializer, initargs=initargs, start_method=method
        )

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        return list(self._pool.map(fn, items))

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        return iter(self._pool.imap(fn, items))

    def prepare_shared(self, workers: int) -> None:
        super().prepare_shared(workers)
        self.open(workers)
        if hasattr(self._pool, "broadcast"):
            self.w8_mode = "broadcast"
            self.warm_up()
        else:  # no broadcast(): fall back to the initializer, which puts pool creation inside the clock
            self.close()

    def share(self, array: FloatArray) -> None:
        if self.w8_mode == "broadcast":
            self._handle = self._pool.broadcast(array)
        else:
            super().share(array)

    def sum_slices(self, bounds: list[tuple[int, int]]) -> list[float]:
        if self.w8_mode == "broadcast":
            # The task gets the handle in its arguments and receives the array itself.
            return list(
                self._pool.starmap(sum_slice, [(self._handle, start, stop) for start, stop in bounds])
            )
        return super().sum_slices(bounds)


class ManycoreSharedRunner(ManycoreRunner):
    """manycore with W8's array allocated by manycore.shared_array (filled before the clock, as the others'
    arrays are made before theirs): broadcast then shares the array's own memory, with no copy."""

    def make_array(self, n: int) -> FloatArray:
        import numpy as np

        import manycore

        array: FloatArray = manycore.shared_array(n, dtype=np.float64)
        # Filled in slices: a full-size temporary would double the peak the footprint sees. Small ones, too:
        # malloc keeps the last freed temporary resident in the heap, and 8 MiB ones added 8 MiB to the
        # footprint (measured), which is the harness's memory, not the library's.
        step = 1 << 15
        for start in range(0, n, step):
            array[start : start + step] = np.arange(start, min(n, start + step), dtype=np.float64)
        return array


class ExecutorRunner(Runner):
    """concurrent.futures.ProcessPoolExecutor; map takes the tuned chunksize (its default is 1)."""

    def __init__(self, force_chunksize: int | None = None) -> None:
        super().__init__()
        self._force_chunksize = force_chunksize
        self._executor: Any = None

    def _make_executor(self, workers: int, initializer: Initializer, initargs: tuple[Any, ...]) -> Any:
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=workers, initializer=initializer, initargs=initargs)

    def _chunksize(self, tuned: int) -> int:
        return self._force_chunksize or tuned

    def open(self, workers: int, initializer: Initializer = None, initargs: tuple[Any, ...] = ()) -> None:
        self.workers = workers
        self._executor = self._make_executor(workers, initializer, initargs)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        return list(self._executor.map(fn, items, chunksize=self._chunksize(chunksize)))

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        # Executor.map submits the whole input before yielding anything: W7 shows what that costs.
        return iter(self._executor.map(fn, items, chunksize=self._chunksize(chunksize)))

    def call(self, fn: Callable[[], Any]) -> Any:
        return self._executor.submit(fn).result()

    def submit_all(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        from concurrent.futures import as_completed

        futures = [self._executor.submit(fn, item) for item in items]
        return [future.result() for future in as_completed(futures)]

    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        from concurrent.futures import as_completed

        return (future.result() for future in as_completed([self._executor.submit(fn, x) for x in items]))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class LokyRunner(ExecutorRunner):
    """loky's reusable executor, the entry point its README shows."""

    def _make_executor(self, workers: int, initializer: Initializer, initargs: tuple[Any, ...]) -> Any:
        import loky

        return loky.get_reusable_executor(max_workers=workers, initializer=initializer, initargs=initargs)


class JoblibRunner(Runner):
    """joblib.Parallel (loky backend, batch_size="auto"), kept open as a context manager to reuse workers."""

    w8_mode = "memory-mapped argument"

    def __init__(self) -> None:
        super().__init__()
        self._parallel: Any = None
        self._array: FloatArray | None = None

    def open(self, workers: int, initializer: Initializer = None, initargs: tuple[Any, ...] = ()) -> None:
        from joblib import Parallel

        self.workers = workers
        self._parallel = Parallel(n_jobs=workers)
        self._parallel.__enter__()

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        from joblib import delayed

        return list(self._parallel(delayed(fn)(item) for item in items))

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        from joblib import Parallel, delayed

        # A second Parallel object: return_as is a constructor argument. It reuses the warm executor.
        lazy = Parallel(n_jobs=self.workers, return_as="generator")
        return iter(lazy(delayed(fn)(item) for item in items))

    def call(self, fn: Callable[[], Any]) -> Any:
        from joblib import delayed

        return self._parallel([delayed(fn)()])[0]

    def submit_all(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        from joblib import delayed

        return list(self._parallel(delayed(fn)(item) for item in items))  # joblib's way: one batch call

    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        from joblib import Parallel, delayed

        lazy = Parallel(n_jobs=self.workers, return_as="generator_unordered", batch_size=1)
        return iter(lazy(delayed(fn)(item) for item in items))

    def close(self) -> None:
        if self._parallel is None:
            return
        self._parallel.__exit__(None, None, None)
        self._parallel = None
        # Parallel leaves its workers alive for reuse (loky's idle timeout is 300 s); W6 asks for a real
        # shutdown, so stop the executor joblib used. reuse=True returns that executor instead of a new one.
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor(reuse=True).shutdown(wait=True)

    def prepare_shared(self, workers: int) -> None:
        super().prepare_shared(workers)
        self.open(workers)
        self.warm_up()

    def share(self, array: FloatArray) -> None:
        self._array = array

    def sum_slices(self, bounds: list[tuple[int, int]]) -> list[float]:
        from joblib import delayed

        # joblib memory-maps a numpy argument above max_nbytes (1 MB): the documented way to share it.
        array = self._array
        return list(self._parallel(delayed(sum_slice)(array, start, stop) for start, stop in bounds))


class MpireRunner(Runner):
    """mpire.WorkerPool with keep_alive=True (its documented way to reuse workers across map calls)."""

    w8_mode = "shared_objects"

    def __init__(self) -> None:
        super().__init__()
        self._pool: Any = None

    def open(self, workers: int, initializer: Initializer = None, initargs: tuple[Any, ...] = ()) -> None:
        from mpire import WorkerPool  # type: ignore[attr-defined]  # mpire's documented import

        if initializer is not None:
            raise ValueError("mpire takes shared_objects instead of an initializer")
        self.workers = workers
        self._pool = WorkerPool(n_jobs=workers, keep_alive=True)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        # By default mpire glues numpy results into one array (an extra copy); W4b wants the 32 arrays.
        return list(self._pool.map(fn, items, concatenate_numpy_output=False))

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        # Without a length mpire cannot size chunks (it warns and falls back to 4): pass chunk_size, as its
        # docs advise, with the same 1000 as the other peers.
        return iter(self._pool.imap(fn, items, chunk_size=chunksize))

    def call(self, fn: Callable[[], Any]) -> Any:
        return self._pool.apply(fn)

    def submit_all(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        pending = [self._pool.apply_async(fn, (item,)) for item in items]
        return [result.get() for result in pending]

    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        return iter(self._pool.imap_unordered(fn, items, chunk_size=1))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop_and_join()
            self._pool.terminate()  # stop_and_join leaves the comms open; terminate releases them
            self._pool = None

    def share(self, array: FloatArray) -> None:
        from mpire import WorkerPool  # type: ignore[attr-defined]  # mpire's documented import

        # keep_alive so that the workers are still there when W8 measures the footprint after the map.
        self._pool = WorkerPool(n_jobs=self.workers, shared_objects=array, keep_alive=True)

    def sum_slices(self, bounds: list[tuple[int, int]]) -> list[float]:
        # mpire passes shared_objects as the first argument and unpacks each tuple after it.
        return list(self._pool.map(sum_slice, bounds, concatenate_numpy_output=False))


class PebbleRunner(Runner):
    """pebble.ProcessPool; map takes the tuned chunksize (its default is 1)."""

    def __init__(self) -> None:
        super().__init__()
        self._pool: Any = None

    def open(self, workers: int, initializer: Initializer = None, initargs: tuple[Any, ...] = ()) -> None:
        from pebble import ProcessPool

        self.workers = workers
        self._pool = ProcessPool(max_workers=workers, initializer=initializer, initargs=initargs)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        return list(self._pool.map(fn, items, chunksize=chunksize).result())

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        # pebble's map schedules the whole input at once; its result() iterates in order.
        return iter(self._pool.map(fn, items, chunksize=chunksize).result())

    def call(self, fn: Callable[[], Any]) -> Any:
        return self._pool.schedule(fn).result()

    def submit_all(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        from concurrent.futures import as_completed

        futures = [self._pool.schedule(fn, args=(item,)) for item in items]
        return [future.result() for future in as_completed(futures)]

    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        from concurrent.futures import as_completed

        futures = [self._pool.schedule(fn, args=(item,)) for item in items]
        return (future.result() for future in as_completed(futures))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


RUNNERS: dict[str, Callable[[], Runner]] = {
    "manycore": ManycoreRunner,
    "manycore-shm": ManycoreSharedRunner,
    "manycore-shm-fork": lambda: ManycoreSharedRunner("fork"),
    "manycore-shm-spawn": lambda: ManycoreSharedRunner("spawn"),
    "manycore-macos-like": ManycoreRunner,
    "manycore-windows-like": ManycoreRunner,
    "serial": SerialRunner,
    "mp": MultiprocessingRunner,
    "mp-fork": lambda: MultiprocessingRunner("fork"),
    "mp-spawn": lambda: MultiprocessingRunner("spawn"),
    "ppe": ExecutorRunner,
    "ppe1": lambda: ExecutorRunner(force_chunksize=1),
    "joblib": JoblibRunner,
    "loky": LokyRunner,
    "mpire": MpireRunner,
    "pebble": PebbleRunner,
}


# --------------------------------------------------------------------------------------------------------
# Workloads: each takes a fresh runner, returns its figures and checks the results (after the clock).
# --------------------------------------------------------------------------------------------------------


class Params(NamedTuple):
    workers: int
    spin_iterations: int  # W2: iterations of spin() that take ~10 ms here, calibrated once per run


Figures = dict[str, float | str]


@contextmanager
def warm_pool(runner: Runner, workers: int) -> Iterator[Runner]:
    """Started pool whose workers have all run a task: W1-W5 and W7 time the work, not the start-up."""
    runner.open(workers)
    try:
        runner.warm_up()
        yield runner
    finally:
        runner.close()


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"wrong results: {what}")


def w1_tiny_items(runner: Runner, params: Params) -> Figures:
    # ProcessPoolExecutor with chunksize=1 manages ~11k items/s: 50,000 items measure that rate in seconds.
    n = 50_000 if getattr(runner, "_force_chunksize", None) == 1 else 1_000_000
    with warm_pool(runner, params.workers):
        started = time.perf_counter()
        squares = runner.map(square, range(n), math.ceil(n / (4 * params.workers)))
        wall = time.perf_counter() - started
    _check(len(squares) == n and squares[-1] == (n - 1) ** 2, "W1 squares")
    return {"items_per_s": n / wall, "wall_s": wall}


def w2_cpu_bound(runner: Runner, params: Params) -> Figures:
    # The orchestrator turns wall_s into a speed-up over the serial runs of the same session. Those run
    # minutes apart from this one, and on a shared VM the speed of a core drifts by 20% or more over minutes,
    # so this process also times the same work serially, half right before and half right after the parallel
    # run: a paired speed-up that such drift cancels out of.
    items = [params.spin_iterations] * 200
    half = len(items) // 2
    with warm_pool(runner, params.workers):
        started = time.perf_counter()
        for n in items[:half]:
            spin(n)
        serial = time.perf_counter() - started
        started = time.perf_counter()
        results = runner.map(spin, items, 1)
        wall = time.perf_counter() - started
        started = time.perf_counter()
        for n in items[half:]:
            spin(n)
        serial += time.perf_counter() - started
        # The same shape of work in items of exactly 10 ms of CPU time: the serial time is known (2.0 s), so
        # this speed-up needs no serial run and does not move with the core's clock speed, only with what
        # the library costs (its own CPU use on the 2 cores, idle workers, the tail).
        burns = [0.010] * len(items)
        started = time.perf_counter()
        burnt = runner.map(cpu_burn, burns, 1)
        burn_wall = time.perf_counter() - started
    _check(results == [spin(params.spin_iterations)] * len(items), "W2 spin totals")
    _check(burnt == burns, "W2 CPU-time items")
    return {"wall_s": wall, "paired_speedup": serial / wall, "cpu_time_speedup": sum(burns) / burn_wall}


def w3_imbalanced(runner: Runner, params: Params) -> Figures:
    items = [0.005] * 60 + [0.2] * 4  # the four long items come last: a static split stalls on them
    ideal = sum(items) / params.workers
    with warm_pool(runner, params.workers):
        started = time.perf_counter()
        results = runner.map(busy_wait, items, 1)
        makespan = time.perf_counter() - started
    _check(results == items, "W3 durations")
    return {"makespan_ratio": makespan / ideal, "makespan_s": makespan}


def w4_big_inputs(runner: Runner, params: Params) -> Figures:
    import numpy as np

    arrays = [np.full(ARRAY_16MIB_ITEMS, float(i)) for i in range(32)]
    total_bytes = sum(array.nbytes for array in arrays)
    with warm_pool(runner, params.workers):
        started = time.perf_counter()
        sums = runner.map(array_sum, arrays, 1)
        wall = time.perf_counter() - started
    _check(sums == [float(i * ARRAY_16MIB_ITEMS) for i in range(32)], "W4 sums")
    return {"gb_per_s": total_bytes / GB / wall, "wall_s": wall}


def w4b_big_outputs(runner: Runner, params: Params) -> Figures:
    with warm_pool(runner, params.workers):
        started = time.perf_counter()
        arrays = runner.map(make_array, range(32), 1)
        wall = time.perf_counter() - started
    _check(
        all(a.shape == (ARRAY_16MIB_ITEMS,) and a[0] == a[-1] == i for i, a in enumerate(arrays)),
        "W4b arrays",
    )
    return {"gb_per_s": sum(a.nbytes for a in arrays) / GB / wall, "wall_s": wall}


def w5_round_trip(runner: Runner, params: Params) -> Figures:
    max_calls, budget_s = 2000, 10.0  # joblib needs ~10 ms a call: the time budget keeps it to ~10 s
    per_call_ns: list[int] = []
    with warm_pool(runner, params.workers):
        deadline = time.perf_counter() + budget_s
        while len(per_call_ns) < max_calls and time.perf_counter() < deadline:
            started = time.perf_counter_ns()
            runner.call(noop)
            per_call_ns.append(time.perf_counter_ns() - started)
    import statistics

    return {"us_per_call": statistics.median(per_call_ns) / 1000, "calls": len(per_call_ns)}


def w6_cold_start(runner: Runner, params: Params) -> Figures:
    # The library is already imported (by the child's dispatcher): W6 is pool start-up, not import time.
    started = time.perf_counter()
    runner.open(params.workers)
    try:
        runner.call(noop)
    finally:
        runner.close()
    return {"seconds": time.perf_counter() - started}


def kib_items(count: int) -> Iterator[bytes]:
    """A lazy stream of distinct 1 KiB objects: holding all of W7's would take 2 GiB."""
    for _ in range(count):
        yield bytes(1024)


def current_rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def w7_streaming(runner: Runner, params: Params) -> Figures:
    count = 2_000_000
    with warm_pool(runner, params.workers):
        rss_before = current_rss_bytes()
        started = time.perf_counter()
        total = 0
        for length in runner.imap(len, kib_items(count), 1000):
            total += length
        wall = time.perf_counter() - started
        # ru_maxrss is the parent's high-water mark in KiB on Linux; children are not included.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _check(total == count * 1024, "W7 total length")
    return {"rss_growth_mib": max(0, peak - rss_before) / MIB, "wall_s": wall}


def slice_bounds(n: int, tasks: int = 100) -> list[tuple[int, int]]:
    """W8's tasks: ``tasks`` consecutive slices covering ``range(n)``, the last one taking the remainder."""
    step = n // tasks
    return [(i * step, (i + 1) * step if i < tasks - 1 else n) for i in range(tasks)]


def w8_broadcast(runner: Runner, params: Params) -> Figures:
    import numpy as np

    from footprint import footprint_bytes, process_tree, shm_files

    shm_before = shm_files().keys()
    make = getattr(runner, "make_array", None)
    array = make(ARRAY_256MIB_ITEMS) if make else np.arange(ARRAY_256MIB_ITEMS, dtype=np.float64)
    expected = float(array.sum())
    bounds = slice_bounds(ARRAY_256MIB_ITEMS)
    try:
        runner.prepare_shared(params.workers)
        started = time.perf_counter()
        runner.share(array)
        sums = runner.sum_slices(bounds)
        wall = time.perf_counter() - started
        # The pool is still alive: this is the moment every worker holds what it was given.
        footprint = footprint_bytes(process_tree(os.getpid()), shm_before)
    finally:
        runner.close()
    _check(math.isclose(sum(sums), expected, rel_tol=1e-9), "W8 slice sums")
    return {"wall_s": wall, "footprint_mib": footprint / MIB, "mode": runner.w8_mode}


def w9_submit_storm(runner: Runner, params: Params) -> Figures:
    n = 10_000
    with warm_pool(runner, params.workers):
        started = time.perf_counter()
        results = runner.submit_all(square, range(n))
        wall = time.perf_counter() - started
    _check(sorted(results) == [x * x for x in range(n)], "W9 squares")
    return {"wall_s": wall}


def w10_fairness(runner: Runner, params: Params) -> Figures:
    items = list(range(10))
    with warm_pool(runner, params.workers):
        started = time.perf_counter()
        results = runner.imap_unordered(fast_or_slow, items)
        seen: list[int] = []
        for value in results:
            seen.append(value)
            if sum(1 for x in seen if x != 1) == len(items) - 1:
                break
        wall = time.perf_counter() - started
        seen += results  # the slow item, if it was not in yet: outside the clock
    _check(sorted(seen) == items, "W10 items")
    return {"fast_results_s": wall}


WORKLOADS: dict[str, Callable[[Runner, Params], Figures]] = {
    "W1": w1_tiny_items,
    "W2": w2_cpu_bound,
    "W3": w3_imbalanced,
    "W4": w4_big_inputs,
    "W4b": w4b_big_outputs,
    "W5": w5_round_trip,
    "W6": w6_cold_start,
    "W7": w7_streaming,
    "W8": w8_broadcast,
    "W9": w9_submit_storm,
    "W10": w10_fairness,
}

LIBRARY_STDLIB = {"serial", "mp", "mp-fork", "mp-spawn", "ppe", "ppe1"}
# manycore with Linux's fast paths hidden (manycore._platform): the code paths macOS and Windows run.
LIBRARY_PLATFORM = {"manycore-macos-like": "macos-like", "manycore-windows-like": "windows-like"}

# The module each library needs; imported by the child before any clock starts.
LIBRARY_MODULES: dict[str, str] = {
    "manycore": "manycore",
    "manycore-shm": "manycore",
    "manycore-shm-fork": "manycore",
    "manycore-shm-spawn": "manycore",
    "manycore-macos-like": "manycore",
    "manycore-windows-like": "manycore",
    "joblib": "joblib",
    "loky": "loky",
    "mpire": "mpire",
    "pebble": "pebble",
    "ppe": "concurrent.futures",
    "ppe1": "concurrent.futures",
    "mp": "multiprocessing",
    "mp-fork": "multiprocessing",
    "mp-spawn": "multiprocessing",
}


def run_workload(library: str, workload: str, params: Params) -> Figures:
    """Import the library (outside any clock), then run one workload with a fresh runner."""
    import importlib

    if library in LIBRARY_PLATFORM:  # before manycore is imported: it reads the switch once
        os.environ["MANYCORE_PLATFORM"] = LIBRARY_PLATFORM[library]
    if library in LIBRARY_MODULES:
        importlib.import_module(LIBRARY_MODULES[library])
    return WORKLOADS[workload](RUNNERS[library](), params)


RESULT_TAG = "@@bench-result@@ "


def child_main(argv: Sequence[str]) -> None:
    """Entry of a child process (run.py starts it with `python -c`): LIB WORKLOAD WORKERS SPIN_ITERATIONS.

    Prints one tagged JSON line: {"figures": {...}} or {"error": "...", "traceback": "..."}.
    """
    import json
    import traceback

    library, workload, workers, spin_iterations = argv
    try:
        figures = run_workload(library, workload, Params(int(workers), int(spin_iterations)))
        payload: dict[str, Any] = {"figures": figures}
    except Exception as exc:  # reported as ERROR in its cell; the run goes on
        payload = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    print(RESULT_TAG + json.dumps(payload), flush=True)


def calibrate_spin(target_s: float = 0.010) -> int:
    """Iterations of spin() that take `target_s` here (best of several tries, to skip noisy ones)."""
    probe = 200_000
    spin(probe)  # warm the interpreter's caches
    best = min(_timed(spin, probe) for _ in range(7))
    return max(1, round(probe * target_s / best))


def _timed(fn: Callable[[int], object], arg: int) -> float:
    started = time.perf_counter()
    fn(arg)
    return time.perf_counter() - started
