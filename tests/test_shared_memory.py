"""Large buffers through shared memory, broadcast, and BLAS thread limits (issue: big data without copies)."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
from collections.abc import Iterator

import numpy as np
import psutil
import pytest

import manycore
from manycore import _platform
from manycore.errors import SerializationError

from shm_tasks import (
    big_sum,
    blas_env,
    blas_pool_threads,
    describe,
    identity,
    is_readonly,
    keep_first,
    make_16mib,
    make_array,
    memfds,
    numpy_imported,
    os_threads_around_a_matmul,
    slice_sum,
    sum_with,
    worker_pid,
)

pytestmark = pytest.mark.timeout(120)

BIG = 1 << 20  # elements: 8 MiB of float64, well above the 256 KiB threshold


def shm_state() -> tuple[int, int, set[str]]:
    """This process's mappings and fds of manycore's memfd segments, and /dev/shm entries named for manycore.

    manycore's segments are memfds (no name in /dev/shm, freed with their last fd and mapping), so "nothing
    outlives its use" means: once the pool is closed and the results dropped, no such mapping or fd remains.
    (Other libraries on a shared machine create /dev/shm entries of their own; only ours are looked at.)
    """
    gc.collect()
    with open("/proc/self/maps") as maps:
        mapped = sum("memfd:manycore" in line for line in maps)
    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:manycore")
    return mapped, fds, {name for name in os.listdir("/dev/shm") if "manycore" in name}


@pytest.fixture
def shm_unchanged() -> Iterator[None]:
    before = shm_state()
    yield
    assert shm_state() == before


@pytest.fixture
def pool(no_leftover_processes: None, shm_unchanged: None) -> Iterator[manycore.Pool]:
    with manycore.Pool(2) as p:
        yield p


ARRAYS = {
    "c-order float64": np.random.default_rng(0).random(BIG),
    "fortran 2-d": np.asfortranarray(np.arange(BIG, dtype=np.int32).reshape(1024, -1)),
    "non-contiguous": np.arange(4 * BIG, dtype=np.float32)[::4],
    "zero-size": np.zeros((0, 5)),
    "object": np.array([1, "a", None] * 200_000, dtype=object),
    "structured": np.zeros(BIG // 4, dtype=[("x", "f8"), ("y", "i4")]),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_round_trip_is_identical_to_the_pickled_path(pool: manycore.Pool, name: str) -> None:
    arr = ARRAYS[name]
    with manycore.Pool(2, zero_copy_threshold=None) as pickled_pool:
        reference = pickled_pool.apply(identity, (arr,))
    got = pool.apply(identity, (arr,))
    for out in (got, reference):
        assert out.dtype == arr.dtype and out.shape == arr.shape
        assert out.flags.writeable
    assert got.flags.c_contiguous == reference.flags.c_contiguous
    assert got.flags.f_contiguous == reference.flags.f_contiguous
    if arr.dtype != object:
        assert np.array_equal(got, arr)
    else:
        assert list(got) == list(arr)


def test_inputs_seen_by_the_task_match_the_pickled_path(pool: manycore.Pool) -> None:
    arrays = [np.full(BIG, float(i)) for i in range(8)]
    with manycore.Pool(2, zero_copy_threshold=None) as pickled_pool:
        reference = pickled_pool.map(describe, arrays)
    assert pool.map(describe, arrays) == reference


def test_many_large_results_are_all_correct(pool: manycore.Pool) -> None:
    results = pool.map(make_array, range(24))
    assert all(r.shape == (1 << 18,) and (r == i).all() for i, r in enumerate(results))
    results[0][:] = -1  # writable, and private: the next call's results are unaffected
    assert all((r == i).all() for i, r in enumerate(pool.map(make_array, range(24))))


@pytest.mark.needs("memfd")  # counted as the worker's memfds
def test_results_live_in_their_segment_until_dropped_then_it_is_reused(no_leftover_processes: None) -> None:
    """Results are rebuilt on the worker's segment, with no copy: while the user holds one, its segment is never
    reused (the values stay put); once dropped, the segment goes back to the worker, which reuses it."""
    with manycore.Pool(1) as pool:
        held = [pool.apply(make_16mib, (i,)) for i in range(4)]
        assert pool.apply(memfds) >= 4  # one segment per held result
        for i in range(10, 20):
            assert (pool.apply(make_16mib, (i,)) == i).all()  # dropped at once: its segment comes back
        assert all((r == i).all() and r.flags.writeable for i, r in enumerate(held))
        del held
        gc.collect()
        for i in range(40):
            assert pool.apply(make_16mib, (i,))[-1] == i
        # Without reuse this would be one segment per call (over 50); the pool keeps a few warm ones.
        assert pool.apply(memfds) <= 6


def test_results_held_by_the_user_do_not_count_against_max_memory_per_worker(
    no_leftover_processes: None,
) -> None:
    with manycore.Pool(1, max_memory_per_worker=300 << 20) as pool:
        first = pool.apply(worker_pid)
        held = pool.map(make_16mib, range(40))  # 640 MiB of results, all in the worker's segments
        assert pool.apply(worker_pid) == first  # shared memory is not the worker's own: no restart
        assert all(r[0] == i for i, r in enumerate(held))


def test_bytes_bytearray_and_memoryview_items(pool: manycore.Pool) -> None:
    blob = os.urandom(3 << 20)
    assert pool.apply(identity, (blob,)) == blob
    assert pool.apply(identity, (bytearray(blob),)) == bytearray(blob)
    view = pool.apply(identity, (memoryview(blob),))
    assert isinstance(view, memoryview) and bytes(view) == blob


def test_task_that_keeps_its_input_does_not_see_it_overwritten(no_leftover_processes: None) -> None:
    with manycore.Pool(1) as pool:
        first = np.full(BIG, 1.0)
        assert pool.apply(keep_first, (first,)) == 1.0
        for value in (2.0, 3.0):  # reuse of the first input's segment would change KEPT[0] in the worker
            assert pool.apply(keep_first, (np.full(BIG, value),)) == 1.0


def test_array_over_2_gib(pool: manycore.Pool) -> None:
    huge = np.ones((2 << 30) + 4096, dtype=np.uint8)
    huge[-1] = 7
    assert pool.apply(big_sum, (huge,)) == int(huge[:: 1 << 20].sum()) + 7


def test_broadcast_handle_in_args_tuple_and_partial(pool: manycore.Pool) -> None:
    table = np.arange(200_000, dtype=np.float64)
    handle = pool.broadcast(table)
    expected = [float(table[i * 1000 : (i + 1) * 1000].sum()) for i in range(50)]
    assert pool.map(slice_sum, [(handle, i) for i in range(50)]) == expected
    assert pool.map(functools.partial(sum_with, handle), [1, 5]) == [1.0, 5.0]
    assert pool.apply(is_readonly, (handle,))
    handle.release()
    with pytest.raises(SerializationError, match="released"):
        pool.apply(is_readonly, (handle,))


def test_broadcast_of_plain_objects(pool: manycore.Pool) -> None:
    lookup = pool.broadcast({"a": 1, "b": [2, 3]})
    assert pool.apply(lambda h: h["b"][1], (lookup,)) == 3


def test_broadcast_handle_of_another_pool_is_rejected(pool: manycore.Pool) -> None:
    with manycore.Pool(1) as other:
        foreign = other.broadcast(np.zeros(10))
        with pytest.raises(ValueError, match="another pool"):
            pool.apply(is_readonly, (foreign,))


@pytest.mark.filterwarnings("ignore:This process.*fork:DeprecationWarning")
def test_broadcast_with_every_start_method(start_method: str, no_leftover_processes: None) -> None:
    with manycore.Pool(2, start_method=start_method) as pool:
        handle = pool.broadcast(np.arange(1_000_000, dtype=np.float64))
        assert pool.map(slice_sum, [(handle, i) for i in range(4)]) == [
            float(np.arange(i * 1000, (i + 1) * 1000).sum()) for i in range(4)
        ]


def _pss_of_tree() -> int:
    me = psutil.Process()
    total = me.memory_full_info().pss
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_full_info().pss
    return total


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["forkserver", "fork", "spawn"])
def test_a_1_gib_broadcast_used_by_100_tasks_adds_at_most_1_15_gib(
    start_method: str, no_leftover_processes: None, shm_unchanged: None
) -> None:
    """The issue's memory bound, as stated: PSS counts shared pages once, so the workers mapping the broadcast
    add nothing beyond the one shared copy (and their own small heaps)."""
    big = np.ones(1 << 27, dtype=np.float64)  # 1 GiB, an ordinary array of this process
    with manycore.Pool(2, start_method=start_method) as pool:
        pool.map(identity, range(4))  # workers started
        before = _pss_of_tree()
        handle = pool.broadcast(big)
        assert pool.map(slice_sum, [(handle, i) for i in range(100)]) == [1000.0] * 100
        # Touch every page of the broadcast in both workers.
        pool.map(
            lambda args: float(args[0][args[1] :: 512].sum()), [(handle, 0), (handle, 1)] * 2, chunksize=1
        )
        added = _pss_of_tree() - before
        handle.release()
    assert added <= 1.15 * big.nbytes, f"broadcast added {added / 2**20:.0f} MiB for a 1 GiB array"


def test_blas_threads_default_and_explicit(no_leftover_processes: None) -> None:
    cores = len(os.sched_getaffinity(0))
    with manycore.Pool(2) as pool:
        assert set(pool.map(blas_env, range(4), chunksize=1)) == {str(max(1, cores // 2))}
    with manycore.Pool(2, blas_threads=3) as pool:
        assert set(pool.map(blas_env, range(4), chunksize=1)) == {"3"}
    with pytest.raises(ValueError, match="blas_threads"):
        manycore.Pool(2, blas_threads=0)


@pytest.mark.parametrize("start_method", ["forkserver", "fork", "spawn"])
def test_blas_pools_really_hold_the_limit_with_every_start_method(
    start_method: str, no_leftover_processes: None
) -> None:
    """Not just the variable: the BLAS library numpy loaded in the worker runs that many threads, also where
    the worker preloaded numpy at start-up (forkserver, spawn), before any task ran."""
    pytest.importorskip("threadpoolctl")
    with manycore.Pool(2, blas_threads=1, start_method=start_method) as pool:
        if start_method != "fork":
            assert pool.map(numpy_imported, range(2), chunksize=1) == [
                True,
                True,
            ]  # preloaded: the parent has it
        assert pool.map(blas_pool_threads, range(4), chunksize=1) == [[1]] * 4


@pytest.mark.parametrize("start_method", ["forkserver", "fork", "spawn"])
def test_a_worker_limited_to_one_blas_thread_runs_no_idle_blas_threads(
    start_method: str, no_leftover_processes: None
) -> None:
    """OpenBLAS restarts its whole thread pool when its thread count is set in a forked child, and those
    threads spin for ~0.1 s, taking the worker's core: a worker limited to one BLAS thread must have none
    that competes with it (stopped, or left at idle priority where OpenBLAS does not export its shutdown)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not any(info["internal_api"] == "openblas" for info in threadpoolctl.threadpool_info()):
        pytest.skip("numpy here does not use OpenBLAS")
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux /proc to count threads")
    # The main thread, and where PR_SET_PDEATHSIG is missing (a simulated platform), the watchdog that ends
    # the worker with its parent (it sleeps: no competition).
    threads = 1 if _platform.has("pdeathsig") else 2
    with manycore.Pool(2, blas_threads=1, start_method=start_method) as pool:
        assert pool.map(os_threads_around_a_matmul, range(4), chunksize=1) == [(threads, True, threads)] * 4


def test_zero_copy_threshold_validation() -> None:
    with pytest.raises(ValueError, match="zero_copy_threshold"):
        manycore.Pool(2, zero_copy_threshold=-1)


def test_shared_array_is_broadcast_without_a_copy(pool: manycore.Pool) -> None:
    table = manycore.shared_array((1000, 200), dtype=np.float64)
    table[:] = np.arange(200)
    handle = pool.broadcast(table)
    assert handle.segment is not None
    assert handle.nbytes < table.nbytes + 4096  # the handle's segment is the array's own memory
    assert pool.map(slice_sum, [(handle, 0)]) == [float(table[:1000].sum())]
    assert pool.apply(is_readonly, (handle,))
    handle.release()
    table[0, 0] = 5.0  # still the caller's writable array
    assert table[0, 0] == 5.0


def test_shared_array_shapes_and_dtypes() -> None:
    a = manycore.shared_array(10, dtype=np.int32)
    b = manycore.shared_array((3, 4), dtype="f4", order="F")
    assert a.shape == (10,) and a.dtype == np.int32 and a.flags.writeable
    assert b.shape == (3, 4) and b.flags.f_contiguous
