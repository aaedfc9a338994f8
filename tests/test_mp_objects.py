"""multiprocessing's own objects, Manager proxies and worker identity: as with multiprocessing.Pool (issue 11)."""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from multiprocessing import shared_memory
from typing import Any

import pytest

import manycore
import mp_tasks
from manycore.errors import InitializerError, SerializationError

KIND = {"fork": "ForkPoolWorker", "forkserver": "ForkServerPoolWorker", "spawn": "SpawnPoolWorker"}


def _objects(ctx: Any) -> dict[str, Any]:
    return {
        "lock": ctx.Lock(),
        "rlock": ctx.RLock(),
        "semaphore": ctx.Semaphore(2),
        "condition": ctx.Condition(),
        "event": ctx.Event(),
        "value": ctx.Value("i", 0),
        "array": ctx.Array("i", 4),
        "queue": ctx.Queue(),
        "simple_queue": ctx.SimpleQueue(),
        "joinable_queue": ctx.JoinableQueue(),
    }


@pytest.mark.needs("fd_passing")  # a Queue's pipe, a sharedctypes arena
@pytest.mark.timeout(90)
def test_sync_objects_in_initargs(start_method: str) -> None:
    """The stdlib docs' pattern: Pool(initializer=init, initargs=(lock, ...)) with the pool's context."""
    ctx = multiprocessing.get_context(start_method)
    objects = _objects(ctx)
    objects["event"].set()
    shm = shared_memory.SharedMemory(create=True, size=8)
    objects["shm"] = shm
    try:
        with manycore.Pool(
            2, start_method=start_method, initializer=mp_tasks.keep, initargs=(objects,)
        ) as pool:
            assert pool.map(mp_tasks.use_objects, range(4), chunksize=1) == [0, 1, 2, 3]
            for name in ("queue", "simple_queue", "joinable_queue"):
                q = objects[name]
                got = sorted(q.get(timeout=30) if name != "simple_queue" else q.get() for _ in range(4))
                assert got == [0, 1, 2, 3], name
        assert objects["value"].value == 6
        assert list(objects["array"]) == [0, 10, 20, 30]
        assert bytes(shm.buf[:4]) == b"\x01\x02\x03\x04"
    finally:
        shm.close()
        shm.unlink()


@pytest.mark.needs("fork")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", [None, "fork"])
def test_fork_context_objects_work_with_default_and_fork(method: str | None) -> None:
    """multiprocessing.Lock() on Linux before 3.14 is a fork-context Lock: it can only be inherited.

    With the start method left to manycore, such a pool forks its workers (as multiprocessing.Pool does by
    default there); with start_method="fork" they inherit it."""
    lock = multiprocessing.get_context("fork").Lock()
    with manycore.Pool(2, start_method=method, initializer=mp_tasks.keep, initargs=({"lock": lock},)) as pool:
        assert pool.map(mp_tasks.lock_then, range(4)) == [0, 1, 2, 3]
        name = pool.apply(mp_tasks.identity)[0]
    assert name.startswith("ForkPoolWorker-")


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_fork_context_lock_with_chosen_method_names_the_fix(method: str) -> None:
    lock = multiprocessing.get_context("fork").Lock()
    with pytest.raises(SerializationError, match=rf"get_context\('{method}'\)\.Lock\(\)"):
        manycore.Pool(2, start_method=method, initializer=mp_tasks.keep, initargs=({"lock": lock},))


@pytest.mark.timeout(90)
def test_manager_proxies_as_arguments_results_and_initargs(start_method: str) -> None:
    with multiprocessing.Manager() as manager:
        d, shared = manager.dict(), manager.list()
        args = ({"dict": d, "list": shared},)
        with manycore.Pool(2, start_method=start_method, initializer=mp_tasks.keep, initargs=args) as pool:
            results = pool.map(mp_tasks.store, [(d, i) for i in range(4)], chunksize=1)
            assert dict(d) == {0: 0, 1: 1, 2: 4, 3: 9}
            assert all(dict(r) == dict(d) for r in results)  # proxies came back as results, and work
            assert sorted(pool.map(mp_tasks.store_in_initargs, range(1, 4))) == [1, 2, 3]
        assert dict(d) == {0: 0, 1: 1, 2: 4, 3: 9} | {1: -1, 2: -2, 3: -3}
        assert sorted(shared) == [1, 2, 3]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", ["unpickling raises", "unpickling kills", "initializer kills"])
def test_workers_that_cannot_start_break_the_pool(start_method: str, bad: str) -> None:
    """No restart loop: every pending and later call gets InitializerError (a Manager proxy in initargs, whose
    authkey the worker lacked, made workers die at start again and again and the map hang)."""
    if start_method == "fork" and bad != "initializer kills":
        pytest.skip("forked workers inherit initargs: nothing is unpickled")
    init: Any = mp_tasks.keep
    args: tuple[Any, ...] = (
        {"x": mp_tasks.BadInWorker() if bad == "unpickling raises" else mp_tasks.DiesInWorker()},
    )
    if bad == "initializer kills":
        init, args = mp_tasks.die_at_start, (None,)
    pool = manycore.Pool(2, start_method=start_method, initializer=init, initargs=args)
    try:
        pending = pool.map_async(mp_tasks.lock_then, range(8), chunksize=1)
        with pytest.raises(InitializerError):
            pending.get(timeout=50)
        with pytest.raises(InitializerError):
            pool.apply(mp_tasks.lock_then, (1,))
    finally:
        pool.terminate()


@pytest.mark.timeout(60)
def test_worker_identity_as_in_multiprocessing(start_method: str) -> None:
    """current_process().name/_identity, parent_process() and authkey as in multiprocessing's pool workers."""
    me = multiprocessing.current_process()
    with manycore.Pool(2, start_method=start_method) as pool:
        seen = pool.map(mp_tasks.identity, range(6), chunksize=1)
    pids = {row[5] for row in seen}
    assert len(pids) <= 2
    for name, identity, parent_pid, parent_name, authkey, _ in seen:
        assert isinstance(identity, tuple) and len(identity) == len(me._identity) + 1  # type: ignore[attr-defined]
        assert re.fullmatch(rf"{KIND[start_method]}-\d+", name), name
        assert name == f"{KIND[start_method]}-{':'.join(map(str, identity))}"
        assert parent_pid == os.getpid()
        assert parent_name == f"{me.name} alive=True"
        assert authkey == bytes(me.authkey)
    assert len({row[1] for row in seen}) == len(pids)  # one identity per worker


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_still_start_without_multiprocessing(method: str) -> None:
    """The identity is set when a task imports multiprocessing, not by importing it in every worker (W6)."""
    with manycore.Pool(1, start_method=method) as pool:
        assert pool.apply(mp_tasks.heavy_modules) == []


@pytest.mark.needs("fd_passing")  # the parent's resource tracker is passed as a descriptor
@pytest.mark.timeout(60)
def test_shared_memory_in_initargs_outlives_the_workers(start_method: str) -> None:
    """Workers register shared memory with the parent's resource tracker, as multiprocessing's children do:
    a tracker of the worker's own unlinked the segment (and warned) once the worker exited."""
    shm = shared_memory.SharedMemory(create=True, size=8)
    try:
        with manycore.Pool(
            2, start_method=start_method, initializer=mp_tasks.keep, initargs=({"shm": shm},)
        ) as pool:
            assert pool.map(mp_tasks.touch_shm, range(4), chunksize=1) == list(range(4))
            pool.close()
            pool.join()
        time.sleep(1)  # a worker's own tracker would have seen its worker go and unlinked the segment by now
        again = shared_memory.SharedMemory(name=shm.name)  # FileNotFoundError if it was unlinked
        assert bytes(again.buf[:4]) == b"\x01\x02\x03\x04"
        again.close()
    finally:
        shm.close()
        shm.unlink()
