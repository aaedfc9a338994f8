"""The same tests for every backend: the Pool API keeps its meaning on processes, threads, Dask and Ray."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import manycore
from manycore.backends import Capabilities

from contract_tasks import (
    add,
    exit_on_three,
    exit_once_on_three,
    explode,
    fail_on_three,
    nap,
    pick,
    pid,
    read_state,
    set_state,
    square,
)

pytestmark = pytest.mark.timeout(180)

MakePool = Callable[..., manycore.Pool]


def test_ordered_map_and_starmap(make_pool: MakePool) -> None:
    with make_pool() as pool:
        assert pool.map(square, range(2000)) == [x * x for x in range(2000)]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.map(square, []) == []


def test_lazy_imap_and_imap_unordered(make_pool: MakePool) -> None:
    with make_pool() as pool:
        assert list(itertools.islice(pool.imap(square, itertools.count()), 5)) == [0, 1, 4, 9, 16]
        assert sorted(pool.imap_unordered(square, iter(range(100)))) == [x * x for x in range(100)]


def test_apply_async_and_callbacks(make_pool: MakePool) -> None:
    got: list[int] = []
    with make_pool() as pool:
        result = pool.apply_async(add, (20, 22), callback=got.append)
        assert result.get(60) == 42
        assert got == [42]
        assert pool.apply(square, (9,)) == 81


def test_errors_keep_type_and_on_error_return(make_pool: MakePool) -> None:
    with make_pool() as pool:
        with pytest.raises(ValueError, match="item 3 is bad") as info:
            pool.map(fail_on_three, range(6))
        assert isinstance(info.value.__cause__, manycore.errors.RemoteTraceback)
        out = pool.map(fail_on_three, range(6), on_error="return")
        assert isinstance(out[3], ValueError) and out[:3] == [0, 1, 2] and out[4:] == [4, 5]


def test_lambdas_and_progress(make_pool: MakePool, capsys: pytest.CaptureFixture[str]) -> None:
    offset = 5
    with make_pool() as pool:
        assert pool.map(lambda x: x + offset, range(50), progress="always") == [x + 5 for x in range(50)]
    assert "50/50" in capsys.readouterr().err


def test_broadcast_is_sent_once_and_tasks_get_the_object(make_pool: MakePool) -> None:
    with make_pool() as pool:
        handle = pool.broadcast(list(range(100)))
        assert pool.map(pick, [(handle, 3), (handle, 99)], chunksize=1) == [3, 99]
        handle.release()


def test_task_timeout_is_enforced_or_clearly_refused(make_pool: MakePool, caps: Capabilities) -> None:
    with make_pool() as pool:
        if caps.task_timeout:
            out = pool.map(nap, [0.01, 30.0], task_timeout=1, on_error="return", chunksize=1)
            assert out[0] == 0.01 and isinstance(out[1], manycore.TaskTimeoutError)
        else:
            with pytest.raises(ValueError, match="task_timeout is not supported"):
                pool.map(nap, [0.01], task_timeout=1)
    if not caps.task_timeout:  # as a pool's default: refused when the pool is built, not at its first call
        with pytest.raises(ValueError, match="task_timeout is not supported"):
            make_pool(task_timeout=1)


def test_executor_on_the_backend(make_pool: MakePool, backend_name: str) -> None:
    with manycore.Executor(max_workers=2, backend=backend_name) as ex:
        assert ex.submit(add, 1, 2).result(60) == 3
        assert list(ex.map(square, range(10))) == [x * x for x in range(10)]


def test_one_call_helpers_on_the_backend(make_pool: MakePool, backend_name: str) -> None:
    assert manycore.map(square, range(10), workers=2, backend=backend_name) == [x * x for x in range(10)]
    assert sorted(manycore.imap(square, range(5), workers=2, backend=backend_name, ordered=False)) == [
        0,
        1,
        4,
        9,
        16,
    ]


UNSUPPORTED = [
    # (capability, the option as the user passes it)
    ("max_tasks_per_worker", {"maxtasksperchild": 2}),
    ("max_tasks_per_worker", {"max_tasks_per_worker": 2}),
    ("max_memory_per_worker", {"max_memory_per_worker": 1 << 30}),
    ("start_method", {"start_method": "spawn"}),
    ("task_timeout", {"task_timeout": 5}),
    ("initializer", {"initializer": set_state, "initargs": ("ready",)}),
]


def test_unsupported_options_are_refused(make_pool: MakePool, caps: Capabilities, backend_name: str) -> None:
    """Refused when the pool is built, with a ValueError naming the option (as passed) and the backend."""
    if caps.max_tasks_per_worker:
        pytest.skip("this backend supports maxtasksperchild")
    with pytest.raises(ValueError, match="maxtasksperchild is not supported"):
        make_pool(maxtasksperchild=2)
    for capability, option in UNSUPPORTED:
        if not getattr(caps, capability):
            name = next(iter(option))
            with pytest.raises(ValueError, match=f"^{name} is not supported on the {backend_name} backend"):
                make_pool(**option)


def test_workers_are_reused_between_calls(make_pool: MakePool) -> None:
    with make_pool() as pool:
        first = set(pool.map(pid, range(40), chunksize=1))
        second = set(pool.map(pid, range(40), chunksize=1))
    assert len(first | second) <= 2  # every backend here has 2 slots: 2 processes at most, kept


def test_initializer_runs_in_every_worker_and_its_replacements(
    make_pool: MakePool, caps: Capabilities, backend_name: str
) -> None:
    if not caps.initializer:
        with pytest.raises(ValueError, match=f"initializer is not supported on the {backend_name} backend"):
            make_pool(initializer=set_state, initargs=("ready",))
        return
    with make_pool(initializer=set_state, initargs=("ready",)) as pool:
        assert pool.map(read_state, range(20), chunksize=1) == ["ready"] * 20
        if caps.lost_workers:  # a worker that dies is replaced, and its replacement initialized too
            out = pool.map(exit_on_three, range(6), chunksize=1, on_error="return")
            assert isinstance(out[3], manycore.WorkerLostError)
            assert pool.map(read_state, range(20), chunksize=1) == ["ready"] * 20


def test_failing_initializer_is_an_initializer_error(make_pool: MakePool, caps: Capabilities) -> None:
    if not caps.initializer:
        pytest.skip("this backend refuses initializer")
    with make_pool(initializer=explode) as pool, pytest.raises(manycore.errors.InitializerError) as info:
        pool.map(square, range(10))
    assert "initializer exploded" in str(info.value.__cause__)


def test_closing_the_pool_keeps_the_users_cluster(make_pool: MakePool) -> None:
    with make_pool() as pool:
        pool.map(square, range(10))
    cluster_running = make_pool.cluster_running  # type: ignore[attr-defined]
    if cluster_running is not None:
        assert cluster_running()


def test_dead_worker_fails_only_its_item(make_pool: MakePool, caps: Capabilities) -> None:
    if not caps.lost_workers:
        pytest.skip("this backend has no worker process to lose")
    with make_pool() as pool:
        out = pool.map(exit_on_three, range(6), chunksize=3, on_error="return")
        assert out[:3] == [0, 1, 2] and out[4:] == [4, 5]
        assert isinstance(out[3], manycore.WorkerLostError)
        assert pool.map(square, range(4)) == [0, 1, 4, 9]  # still usable


def test_an_item_whose_worker_died_is_retried(
    make_pool: MakePool, caps: Capabilities, tmp_path: Path
) -> None:
    if not caps.lost_workers:
        pytest.skip("this backend has no worker process to lose")
    marker = str(tmp_path / "died-once")
    with make_pool() as pool:
        out = pool.map(exit_once_on_three, [(x, marker) for x in range(6)], chunksize=3, retries=1)
    assert os.path.exists(marker), "item 3 never killed its worker"
    assert out == [x * x for x in range(6)]


@pytest.mark.parametrize(
    ("engine", "advice"),
    [("dask", "distributed.Client(distributed.LocalCluster())"), ("ray", "Call ray.init()")],
)
def test_an_engine_backend_without_a_cluster_says_how_to_get_one(engine: str, advice: str) -> None:
    """In a fresh interpreter, where no client or runtime exists: a clear error, not a hang or a cluster
    started behind the user's back."""
    pytest.importorskip("distributed" if engine == "dask" else "ray")
    code = (
        "import manycore\n"
        "try:\n"
        f"    manycore.Pool(backend={engine!r})\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('no error')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert f"backend='{engine}' needs a" in out and advice in out, out


def test_dask_pool_closes_only_the_client_it_created(dask_client: object) -> None:
    backend = manycore.backends.Dask(address=dask_client.scheduler.address)  # type: ignore[attr-defined]
    with manycore.Pool(backend=backend) as pool:
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
    assert backend._client.status == "closed"
    assert dask_client.status == "running"  # type: ignore[attr-defined]


def test_ray_pool_holds_one_cpu_per_actor_until_closed(ray_runtime: None) -> None:
    import ray

    def cpus_free_within(expected: float, seconds: float = 30) -> bool:
        deadline = time.monotonic() + seconds
        while ray.available_resources().get("CPU", 0) != expected:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    total = ray.cluster_resources()["CPU"]
    with manycore.Pool(backend="ray") as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
        assert cpus_free_within(0)  # one long-lived actor per CPU, each holding its CPU...
        time.sleep(1.0)
        assert ray.available_resources().get("CPU", 0) == 0  # ...while idle too, unlike a finished task
    assert cpus_free_within(total)  # closing killed them


def test_a_ray_pool_short_of_cpus_finishes_on_the_actors_it_has(ray_runtime: None) -> None:
    """An actor that waits for a CPU (here: held by other Ray work) gets no chunks: they would wait with it."""
    import ray

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self) -> int:
            return os.getpid()

    holder = Holder.remote()  # type: ignore[attr-defined]
    try:
        ray.get(holder.ping.remote(), timeout=60)  # it runs: one of the 2 CPUs is taken
        with manycore.Pool(backend="ray") as pool:  # asks for 2 actors, gets 1
            assert pool.map(square, range(20)) == [x * x for x in range(20)]
            assert len(set(pool.map(pid, range(10), chunksize=1))) == 1
    finally:
        ray.kill(holder)


def test_a_ray_object_takes_the_initializer_itself() -> None:
    # Refused before anything connects to Ray, and pointing to where the initializer goes.
    with pytest.raises(ValueError, match=r"pass the initializer to it: Ray\(initializer=...\)"):
        manycore.Pool(backend=manycore.backends.Ray(), initializer=set_state, initargs=("ready",))
