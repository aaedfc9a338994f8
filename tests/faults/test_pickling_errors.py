"""(Un)pickling failures: the caller gets the type the standard library raises there (and a SerializationError,
naming the item), the worker survives, and every other item arrives. Cases after CPython's
test_concurrent_futures/test_deadlock.py and _test_multiprocessing.py (test_unpickleable_result)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing.pool
import pickle
from functools import partial
from pathlib import Path

import pytest

import manycore
from manycore.errors import SerializationError

from . import bad_pickles, sched_tasks
from .common import make_executor, make_pool

BrokenProcessPool = concurrent.futures.process.BrokenProcessPool

# (what, where): the argument's or result's class in bad_pickles, and what the standard library raises.
ARGUMENT_CASES = [
    ("RuntimeErrorAtPickle", RuntimeError, "argument"),
    ("ErrorAtPickle", pickle.PicklingError, "argument"),
    ("ExitAtPickle", SystemExit, "argument"),
    ("ExitAtUnpickle", BrokenProcessPool, "argument"),
    ("ErrorAtUnpickle", BrokenProcessPool, "argument"),
]
RESULT_CASES = [
    ("ErrorAtPickle", pickle.PicklingError, "result"),
    ("RuntimeErrorAtPickle", RuntimeError, "result"),
    ("ExitAtPickle", SystemExit, "result"),
    ("ErrorAtUnpickle", BrokenProcessPool, "result"),
    ("ExitAtUnpickle", BrokenProcessPool, "result"),
]


def check(err: object, expected: type[BaseException], what: str, index: int | None) -> None:
    assert isinstance(err, expected), repr(err)
    assert isinstance(err, SerializationError), repr(err)
    assert isinstance(err, multiprocessing.pool.MaybeEncodingError)
    assert err.what == what, repr(err)
    if index is not None:
        assert err.index == index, repr(err)
        # Named in the message, or by a note where the message was written before the index was known.
        text = str(err) + "".join(getattr(err, "__notes__", ()))
        assert f"#{index}" in text, text
    # It travels as it is (e.g. returned by a nested pool, or kept by joblib).
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and str(again) == str(err)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("name", "expected", "what"), ARGUMENT_CASES, ids=[c[0] for c in ARGUMENT_CASES])
def test_bad_argument(name: str, expected: type[BaseException], what: str, start_method: str) -> None:
    bad = getattr(bad_pickles, name)()
    items = [0, 1, 2, bad, 4, 5, 6, 7]
    with make_pool(start_method) as pool:
        pids = set(pool.map(bad_pickles.pid_of, range(8), chunksize=1))
        out = pool.map_async(bad_pickles.identity, items, chunksize=4, on_error="return").get(30)
        assert out[:3] == [0, 1, 2] and out[4:] == [4, 5, 6, 7]
        check(out[3], expected, what, 3)
        with pytest.raises(expected) as info:
            pool.apply(bad_pickles.identity, (bad,))
        assert isinstance(info.value, SerializationError)
        # No worker died of it: the same processes serve on.
        assert set(pool.map(bad_pickles.pid_of, range(8), chunksize=1)) <= pids
        assert pool.statistics()["workers"] == 2
    with make_executor(start_method) as ex:
        with pytest.raises(expected) as info:
            ex.submit(bad_pickles.identity, bad).result(30)
        check(info.value, expected, "call argument" if what == "argument" else what, None)
        assert ex.submit(bad_pickles.identity, 5).result(30) == 5


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("name", "expected", "what"), RESULT_CASES, ids=[c[0] for c in RESULT_CASES])
def test_bad_result(name: str, expected: type[BaseException], what: str, start_method: str) -> None:
    task = partial(bad_pickles.make, bad=3, cls_name=name)
    with make_pool(start_method) as pool:
        pids = set(pool.map(bad_pickles.pid_of, range(8), chunksize=1))
        out = pool.map_async(task, range(8), chunksize=4, on_error="return").get(30)
        assert out[4:] == [4, 5, 6, 7]
        if name.endswith("AtUnpickle"):
            # Items 0-3 came back in one message that does not unpickle: all four fail, none runs again (with
            # retries=0, at most once), see test_result_chunk_that_does_not_unpickle_runs_no_item_twice.
            for index in range(4):
                check(out[index], expected, what, index)
        else:
            assert out[:3] == [0, 1, 2]
            check(out[3], expected, what, 3)
        # multiprocessing's own test: apply_async of an unpicklable result -> MaybeEncodingError from get()
        # and to the error_callback.
        seen: list[BaseException] = []
        res = pool.apply_async(task, (3,), error_callback=seen.append)
        with pytest.raises(multiprocessing.pool.MaybeEncodingError):
            res.get(30)
        assert isinstance(seen[0], expected)
        assert set(pool.map(bad_pickles.pid_of, range(8), chunksize=1)) <= pids
    with make_executor(start_method) as ex:
        with pytest.raises(expected) as info:
            ex.submit(task, 3).result(30)
        assert isinstance(info.value, SerializationError)
        assert ex.submit(task, 5).result(30) == 5


@pytest.mark.timeout(90)
@pytest.mark.parametrize("retries", [0, 1])
def test_result_chunk_that_does_not_unpickle_runs_no_item_twice(
    start_method: str, tmp_path: Path, retries: int
) -> None:
    """A chunk's results come back in one message: if the parent cannot unpickle it, every item of the chunk
    ran but no result is readable. With retries=0 none of them runs again (at most once): all fail, naming the
    chunk and how to isolate the culprit. With retries left, each runs again alone and only the culprit fails."""
    log_dir = str(tmp_path)
    task = partial(bad_pickles.logged_make, bad=3, cls_name="ErrorAtUnpickle", log_dir=log_dir)
    with make_pool(start_method) as pool:
        out = pool.map_async(task, range(8), chunksize=4, on_error="return", retries=retries).get(30)
    runs = [sched_tasks.runs_of(log_dir, x) for x in range(8)]
    assert out[4:] == [4, 5, 6, 7]
    if retries == 0:
        assert runs == [1] * 8, runs
        for index in range(4):
            check(out[index], BrokenProcessPool, "result", index)
            assert "items #0-#3" in str(out[index]) and "chunksize=1" in str(out[index]), str(out[index])
    else:
        assert runs == [2] * 4 + [1] * 4, runs
        assert out[:3] == [0, 1, 2]
        check(out[3], BrokenProcessPool, "result", 3)
        assert "items #0-#3" not in str(out[3]), str(out[3])


@pytest.mark.timeout(90)
def test_function_that_does_not_unpickle_in_the_worker(start_method: str) -> None:
    fn = bad_pickles.UnloadableFunction()
    with make_pool(start_method) as pool:
        pids = set(pool.map(bad_pickles.pid_of, range(8), chunksize=1))
        out = pool.map_async(fn, range(6), chunksize=2, on_error="return").get(30)
        for index, err in enumerate(out):
            check(err, BrokenProcessPool, "function", index)
            assert "only unpickles where it was made" in str(err)
        # The same function again (the worker cached its failure), then others: all served, no worker lost.
        assert all(isinstance(e, BrokenProcessPool) for e in pool.map(fn, range(3), on_error="return"))
        assert set(pool.map(bad_pickles.pid_of, range(8), chunksize=1)) <= pids
    with make_executor(start_method) as ex:
        with pytest.raises(BrokenProcessPool):
            ex.submit(fn, 1).result(30)
        assert ex.submit(bad_pickles.identity, 5).result(30) == 5


@pytest.mark.timeout(90)
def test_argument_that_unpickles_only_in_the_parent(start_method: str) -> None:
    """Pickles and unpickles fine here, not in the worker: only that item fails, as a BrokenProcessPool."""
    items: list[object] = [0, 1, bad_pickles.ErrorAtUnpickleInWorker(), 3]
    with make_pool(start_method) as pool:
        out = pool.map_async(bad_pickles.identity, items, chunksize=4, on_error="return").get(30)
    assert out[:2] == [0, 1] and out[3] == 3
    check(out[2], BrokenProcessPool, "argument", 2)
    assert "only unpickles in process" in str(out[2])


@pytest.mark.timeout(90)
def test_chunk_that_arrives_without_its_function_is_sent_again(start_method: str) -> None:
    """The chunk that carries a function can reach a worker after a later chunk of the same function (two
    parent threads send to one socket, or the carrier's argument did not pickle). The worker must hand such a
    chunk back unrun, and the parent send it again with the function, instead of the worker dying of it.

    The parent is made to believe, wrongly, that the worker already has the function: the state that race
    leaves behind, reached here without relying on timing (this reaches into the scheduler on purpose)."""
    with manycore.Pool(1, start_method=start_method) as pool:
        (pid,) = set(pool.map(bad_pickles.pid_of, range(2), chunksize=1))
        scheduler = pool._scheduler
        key = scheduler.functions.get(bad_pickles.identity)[0]
        (worker,) = scheduler._workers.values()
        worker.known_fns[key] = worker.fn_seq  # "sent already": the next chunk goes without the function
        assert pool.map(bad_pickles.identity, range(10), chunksize=5) == list(range(10))
        assert set(pool.map(bad_pickles.pid_of, range(2), chunksize=1)) == {pid}  # the same worker serves on
