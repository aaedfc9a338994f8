"""manycore.Pool against the multiprocessing.Pool contract: same methods, same results, same errors."""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.pool
import threading
import time
import traceback

import pytest

import manycore
from manycore.errors import InitializerError, PoolClosedError

from tasks import (
    add,
    fail_on,
    hoard,
    init_state,
    nested_fail,
    pid,
    read_state,
    sleep_return,
    slow_identity,
    square,
)

pytestmark = pytest.mark.timeout(60)


def test_tutorial_example(no_leftover_processes: None) -> None:
    with manycore.Pool(processes=4) as pool:
        assert pool.map(square, [1, 2, 3, 4, 5]) == [1, 4, 9, 16, 25]


def test_map_matches_builtin_map_on_many_items(pool: manycore.Pool) -> None:
    assert pool.map(square, range(100_000)) == [x * x for x in range(100_000)]


@pytest.mark.parametrize("chunksize", [None, "auto", 1, 7, 1000])
def test_map_respects_explicit_and_auto_chunksize(pool: manycore.Pool, chunksize: object) -> None:
    assert pool.map(square, list(range(500)), chunksize) == [x * x for x in range(500)]  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_chunksize_value_is_a_value_error_naming_it(pool: manycore.Pool, bad: int) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(square, [1, 2], chunksize=bad)


@pytest.mark.parametrize("bad", [1.5, "10", True])
def test_bad_chunksize_type_is_a_type_error_naming_it(pool: manycore.Pool, bad: object) -> None:
    with pytest.raises(TypeError, match="chunksize"):
        pool.map(square, [1, 2], chunksize=bad)  # type: ignore[arg-type]


def test_map_accepts_any_iterable(pool: manycore.Pool) -> None:
    assert pool.map(square, (x for x in range(10))) == [x * x for x in range(10)]
    assert pool.map(square, {3: "a", 1: "b"}) == [9, 1]
    assert pool.map(square, (1, 2)) == [1, 4]


def test_empty_input_and_one_item(pool: manycore.Pool) -> None:
    assert pool.map(square, []) == []
    assert list(pool.imap(square, [])) == []
    assert list(pool.imap_unordered(square, iter([]))) == []
    assert pool.starmap(add, []) == []
    assert pool.map_async(square, []).get(5) == []
    assert pool.map(square, [7]) == [49]


def test_more_workers_than_items_and_than_cores(no_leftover_processes: None) -> None:
    with manycore.Pool(processes=8) as pool:
        assert pool.map(square, [1, 2, 3]) == [1, 4, 9]


def test_processes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="processes"):
        manycore.Pool(processes=0)
    with pytest.raises(TypeError, match="processes"):
        manycore.Pool(processes="2")  # type: ignore[arg-type]


def test_starmap_and_starmap_async(pool: manycore.Pool) -> None:
    pairs = [(i, i + 1) for i in range(50)]
    assert pool.starmap(add, pairs) == [a + b for a, b in pairs]
    assert pool.starmap_async(add, pairs).get(10) == [a + b for a, b in pairs]


def test_apply_and_apply_async_with_kwargs(pool: manycore.Pool) -> None:
    assert pool.apply(add, (2,), {"b": 40}) == 42
    result = pool.apply_async(add, (1, 2))
    assert result.get(10) == 3
    assert result.ready() and result.successful()


def test_async_result_not_ready_contract(pool: manycore.Pool) -> None:
    result = pool.apply_async(sleep_return, (0.5,))
    assert not result.ready()
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.05)
    result.wait(0.01)
    assert result.get(10) == 0.5


def test_callbacks_run_once_with_the_result(pool: manycore.Pool) -> None:
    got: list[object] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def on_result(value: object) -> None:
        got.append(value)
        done.set()

    pool.map_async(square, range(5), callback=on_result, error_callback=errors.append).wait(10)
    assert done.wait(10)
    assert got == [[0, 1, 4, 9, 16]] and errors == []

    failed = threading.Event()
    pool.apply_async(
        fail_on, (3,), callback=got.append, error_callback=lambda e: (errors.append(e), failed.set())
    )
    assert failed.wait(10)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


def test_imap_is_ordered_and_imap_unordered_has_everything(pool: manycore.Pool) -> None:
    assert list(pool.imap(slow_identity, range(200))) == list(range(200))
    assert sorted(pool.imap_unordered(slow_identity, range(200))) == list(range(200))


def test_imap_unordered_yields_in_completion_order(pool: manycore.Pool) -> None:
    first = next(pool.imap_unordered(sleep_return, [1.0, 0.01], chunksize=1))
    assert first == 0.01


def test_imap_is_lazy_on_an_infinite_generator(pool: manycore.Pool) -> None:
    pulled = itertools.count()
    source = (next(pulled) for _ in itertools.count())
    assert list(itertools.islice(pool.imap(square, source), 10)) == [x * x for x in range(10)]
    # The window bounds what was read ahead of the consumer.
    assert next(pulled) < 100_000


def test_imap_first_result_arrives_before_input_is_exhausted(pool: manycore.Pool) -> None:
    produced: list[int] = []

    def gen() -> object:
        for i in range(1000):
            produced.append(i)
            time.sleep(0.002)
            yield i

    it = pool.imap(square, gen())
    assert next(it) == 0
    assert len(produced) < 1000
    it.close()


def test_imap_next_with_timeout(pool: manycore.Pool) -> None:
    it = pool.imap(sleep_return, [0.5])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(timeout=10) == 0.5


def test_generator_that_raises_midway(pool: manycore.Pool) -> None:
    def gen() -> object:
        yield 1
        yield 2
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        pool.map(square, gen())
    got: list[int] = []
    with pytest.raises(RuntimeError, match="source broke"):
        for value in pool.imap(square, gen()):
            got.append(value)  # noqa: PERF402 (the loop must run item by item until the raise)
    assert got == [1, 4]


def test_task_exception_keeps_type_message_and_remote_traceback(pool: manycore.Pool) -> None:
    with pytest.raises(KeyError, match="missing 5") as info:
        pool.map(nested_fail, [5])
    cause = info.value.__cause__
    assert isinstance(cause, manycore.errors.RemoteTraceback)
    assert "_inner_fail" in cause.tb and "tasks.py" in cause.tb and "line" in cause.tb
    printed = "".join(traceback.format_exception(info.value))
    assert "_inner_fail" in printed


def test_map_raises_the_first_failing_item_error(pool: manycore.Pool) -> None:
    with pytest.raises(ValueError, match="item 3 is bad"):
        pool.map(fail_on, range(10))
    result = pool.map_async(fail_on, range(10))
    result.wait(10)
    assert result.ready() and not result.successful()


def test_on_error_return_keeps_every_success(pool: manycore.Pool) -> None:
    out = pool.map(fail_on, range(10), on_error="return")
    assert isinstance(out[3], ValueError)
    assert [x for i, x in enumerate(out) if i != 3] == [x for x in range(10) if x != 3]
    assert isinstance(list(pool.imap(fail_on, range(5), on_error="return"))[3], ValueError)


def test_imap_error_is_raised_at_its_position_and_iteration_continues(pool: manycore.Pool) -> None:
    it = pool.imap(fail_on, range(6), chunksize=2)
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    with pytest.raises(ValueError):
        next(it)
    assert list(it) == [4, 5]


def test_unknown_option_is_rejected(pool: manycore.Pool) -> None:
    with pytest.raises(TypeError, match="colour"):
        pool.map(square, [1], colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="on_error"):
        pool.map(square, [1], on_error="ignore")


def test_lambdas_and_closures_work(pool: manycore.Pool) -> None:
    offset = 10

    def closure(x: int) -> int:
        return x + offset

    assert pool.map(closure, [1, 2]) == [11, 12]
    assert pool.map(lambda x: x * 3, [1, 2]) == [3, 6]
    assert pool.apply(lambda: offset) == 10


def test_use_after_close_is_a_value_error(no_leftover_processes: None) -> None:
    pool = manycore.Pool(2)
    pool.close()
    with pytest.raises(ValueError):
        pool.map(square, [1])
    with pytest.raises(PoolClosedError):
        pool.apply_async(square, (1,))
    pool.join()


def test_join_requires_close_first(no_leftover_processes: None) -> None:
    with manycore.Pool(2) as pool, pytest.raises(ValueError, match="close"):
        pool.join()


def test_close_then_join_finishes_submitted_work(no_leftover_processes: None) -> None:
    pool = manycore.Pool(2)
    results = [pool.apply_async(sleep_return, (0.05,)) for _ in range(6)]
    mapped = pool.map_async(square, range(1000))
    pool.close()
    pool.join()
    assert [r.get(0) for r in results] == [0.05] * 6
    assert mapped.get(0) == [x * x for x in range(1000)]


def test_terminate_fails_unfinished_results_instead_of_hanging(no_leftover_processes: None) -> None:
    pool = manycore.Pool(2)
    pending = pool.apply_async(sleep_return, (30,))
    time.sleep(0.2)
    pool.terminate()  # the test's timeout guards against a hang here
    pool.join()
    with pytest.raises(PoolClosedError):
        pending.get(5)


def test_initializer_and_initargs(no_leftover_processes: None) -> None:
    with manycore.Pool(2, initializer=init_state, initargs=("ready",)) as pool:
        assert pool.map(read_state, range(4)) == ["ready"] * 4


def test_unpicklable_initializer_is_refused_at_creation(no_leftover_processes: None) -> None:
    lock = threading.Lock()  # cannot be pickled
    with pytest.raises(manycore.SerializationError, match="cannot be pickled"):
        manycore.Pool(2, initializer=print, initargs=(lock,))
    # The fork server started before the initializer was pickled; it must not outlive the refusal
    # (no_leftover_processes checks that).


def test_failing_initializer_is_an_error_not_a_hang(no_leftover_processes: None) -> None:
    def explode() -> None:
        raise RuntimeError("initializer exploded")

    with manycore.Pool(2, initializer=explode) as pool, pytest.raises(InitializerError) as info:
        pool.map(square, range(10))
    assert "initializer exploded" in str(info.value.__cause__)


def test_maxtasksperchild_replaces_workers(no_leftover_processes: None) -> None:
    with manycore.Pool(2, maxtasksperchild=1) as pool:
        pids = pool.map(pid, range(6), chunksize=1)
    assert len(set(pids)) == 6


def test_workers_are_reused_between_calls(pool: manycore.Pool) -> None:
    first = set(pool.map(pid, range(20), chunksize=1))
    second = set(pool.map(pid, range(20), chunksize=1))
    assert len(first | second) <= 2


def test_pool_cannot_be_pickled(pool: manycore.Pool) -> None:
    import pickle

    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


def test_unclosed_pool_warns_resource_warning() -> None:
    pool = manycore.Pool(2)
    with pytest.warns(ResourceWarning, match="unclosed"):
        pool.__del__()
    pool.join()


def test_progress_bar_counts_every_item(pool: manycore.Pool, capsys: pytest.CaptureFixture[str]) -> None:
    assert pool.map(square, range(300), progress="always") == [x * x for x in range(300)]
    err = capsys.readouterr().err
    assert "300/300" in err
    assert list(pool.imap(square, iter(range(50)), progress="always")) == [x * x for x in range(50)]
    assert "50it" in capsys.readouterr().err.replace(" ", "").replace("item", "it")


def test_progress_is_quiet_when_not_a_terminal(
    pool: manycore.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    pool.map(square, range(10), progress=True)
    assert capsys.readouterr().err == ""


def test_results_identical_to_multiprocessing(pool: manycore.Pool) -> None:
    data = list(range(-50, 50))
    with multiprocessing.pool.ThreadPool(2) as reference:
        assert pool.map(square, data) == reference.map(square, data)
        assert pool.starmap(add, zip(data, data)) == reference.starmap(add, zip(data, data))


def test_max_memory_per_worker_replaces_a_leaking_worker(no_leftover_processes: None) -> None:
    with manycore.Pool(1, max_memory_per_worker=150 << 20) as pool:
        outcomes = pool.map(hoard, [100] * 4, chunksize=1)
    # Each worker exceeds 150 MiB after its second 100 MiB hoard and is replaced: no process holds three.
    assert max(count for _, count in outcomes) == 2
    assert len({pid for pid, _ in outcomes}) == 2
    with pytest.raises(ValueError, match="max_memory_per_worker"):
        manycore.Pool(1, max_memory_per_worker=0)
