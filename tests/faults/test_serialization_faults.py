"""What cannot be pickled: the function, an argument, a result, an exception; the culprit is named, the worker
survives, and every other item arrives."""

from __future__ import annotations

import gc
import multiprocessing.pool
import socket
import sys
import threading
from functools import partial

import pytest

from manycore.errors import SerializationError

from . import tasks
from .common import check_fault_error, check_others, make_executor, make_pool
from .helpers import child_pids


@pytest.mark.timeout(60)
def test_unpicklable_function_reported_at_submission(no_orphans: set[int]) -> None:
    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        with lock:
            return x

    with make_pool() as pool:
        for call in (
            lambda: pool.map(uses_lock, range(4)),
            lambda: pool.starmap(uses_lock, [(1,)]),
            lambda: pool.apply_async(uses_lock, (1,)),
        ):
            with pytest.raises(SerializationError) as info:
                call()
            assert info.value.what == "function"
            assert "uses_lock" in str(info.value)
            assert isinstance(info.value, multiprocessing.pool.MaybeEncodingError)
        assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]
    with make_executor() as ex:
        with pytest.raises(SerializationError) as info:
            ex.submit(uses_lock, 1).result(30)
        assert info.value.what == "function" and "uses_lock" in str(info.value)
        assert ex.submit(tasks.square, 5).result(30) == 25


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_unpicklable_function_imap_reported_cleanly(method: str, no_orphans: set[int]) -> None:
    """imap with an unpicklable function raises SerializationError, and nothing else goes wrong later."""
    lock = threading.Lock()
    unraisable: list[object] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with make_pool() as pool:
            try:
                getattr(pool, method)(lambda x: lock, range(4))
            except (
                SerializationError
            ) as exc:  # not pytest.raises: its traceback would keep the iterator alive
                assert exc.what == "function"
            else:
                pytest.fail("no SerializationError")
            gc.collect()
            assert pool.map(tasks.square, range(3)) == [0, 1, 4]
    finally:
        sys.unraisablehook = old_hook
    messages = [f"{u.exc_type.__name__}: {u.exc_value} in {u.object!r}" for u in unraisable]  # type: ignore[attr-defined]
    assert not messages, messages


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make_bad", [threading.Lock, socket.socket], ids=["lock", "socket"])
def test_unpicklable_argument_is_that_items_error(make_bad: type, no_orphans: set[int]) -> None:
    bad_obj = make_bad()
    try:
        items: list[object] = [0, 1, 2, bad_obj, 4, 5, 6, 7]
        with make_pool() as pool:
            out = pool.map_async(tasks.identity, items, chunksize=4, on_error="return").get(30)
            assert out[:3] == [0, 1, 2] and out[4:] == [4, 5, 6, 7]
            err = out[3]
            assert isinstance(err, SerializationError), repr(err)
            assert err.what == "argument" and err.index == 3
            assert err.type_name == type(bad_obj).__qualname__
            assert type(bad_obj).__qualname__ in str(err) and "#3" in str(err)
            # imap: the same, item by item
            got = list(pool.imap(tasks.identity, items, chunksize=3, on_error="return"))
            assert isinstance(got[3], SerializationError) and got[3].index == 3
            assert got[:3] == [0, 1, 2] and got[4:] == [4, 5, 6, 7]
            # on_error="raise": map raises it
            with pytest.raises(SerializationError):
                pool.map_async(tasks.identity, items).get(30)
            # apply_async: reported at submission or by get()
            with pytest.raises(SerializationError) as info:
                pool.apply_async(tasks.identity, (bad_obj,)).get(30)
            assert type(bad_obj).__qualname__ in str(info.value)
            assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]
        with make_executor() as ex:
            with pytest.raises(SerializationError) as info:
                ex.submit(tasks.identity, bad_obj).result(30)
            assert type(bad_obj).__qualname__ in str(info.value)
            assert ex.submit(tasks.square, 3).result(30) == 9
    finally:
        if isinstance(bad_obj, socket.socket):
            bad_obj.close()


@pytest.mark.timeout(60)
def test_lambda_inside_argument_is_fine(no_orphans: set[int]) -> None:
    k = 10
    with make_pool() as pool:
        assert pool.map(tasks.call_it, [lambda: 1, lambda: k, lambda: k * 2]) == [1, 10, 20]
    with make_executor() as ex:
        assert ex.submit(tasks.call_it, lambda: k + 1).result(30) == 11


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["unpicklable_result", "unpicklable_exception"])
def test_worker_survives_serialization_failures(kind: str, no_orphans: set[int]) -> None:
    """A result or exception that cannot travel does not cost a worker: the same processes serve on."""
    with make_pool() as pool:
        pool.map(tasks.square, range(4))
        workers_before = child_pids() - no_orphans
        out = pool.map_async(
            partial(tasks.faulty, kind=kind, bad=5), range(10), chunksize=5, on_error="return"
        ).get(30)
        (err,) = check_others("map", out, bad=5)
        check_fault_error(kind, err, "map", bad=5)
        assert pool.map(tasks.square, range(6)) == [x * x for x in range(6)]
        assert child_pids() - no_orphans == workers_before, "a worker was replaced"


@pytest.mark.timeout(60)
def test_unpicklable_exception_keeps_type_message_and_traceback(no_orphans: set[int]) -> None:
    with make_pool() as pool, pytest.raises(SerializationError) as info:
        pool.apply(tasks.faulty, (4,), {"kind": "unpicklable_exception", "bad": 4})
    err = info.value
    assert err.what == "exception"
    assert err.type_name == "UnpicklableError"
    assert "cannot travel 4" in str(err)
    assert "do_fault" in err.detail and "UnpicklableError" in err.detail


@pytest.mark.timeout(60)
def test_unpicklable_exception_message_has_real_newlines(no_orphans: set[int]) -> None:
    with make_pool() as pool, pytest.raises(SerializationError) as info:
        pool.apply(tasks.faulty, (4,), {"kind": "unpicklable_exception", "bad": 4})
    assert "\\n" not in str(info.value), str(info.value)


@pytest.mark.timeout(60)
def test_result_that_cannot_be_rebuilt_in_the_parent_fails_its_chunk_only(no_orphans: set[int]) -> None:
    """A result that pickles in the worker but fails to unpickle in the parent: its chunk's results came back in one
    message that cannot be read, so with retries=0 each item of that chunk fails (none runs again: at most once)
    and every other chunk's results arrive; with retries=1 the chunk runs again item by item and only the culprit
    fails."""
    with make_pool() as pool:
        out = pool.map_async(
            partial(tasks.unloadable_value, bad=6), range(10), chunksize=5, on_error="return"
        ).get(30)
        again = pool.map_async(
            partial(tasks.unloadable_value, bad=6), range(10), chunksize=5, on_error="return", retries=1
        ).get(30)
        assert pool.map(tasks.square, range(3)) == [0, 1, 4]
    errors = check_others("map", out, bad={5, 6, 7, 8, 9})
    for index, err in zip(range(5, 10), errors):
        assert isinstance(err, SerializationError), repr(err)
        assert err.what == "result" and err.index == index
        assert "#5-#9" in str(err)
    (err,) = check_others("map", again, bad=6)
    assert isinstance(err, SerializationError) and err.what == "result", repr(err)


@pytest.mark.timeout(60)
def test_mixed_faults_in_one_map(no_orphans: set[int]) -> None:
    """Several kinds of fault in one call, chunked: each faulty item gets its own error, the rest arrive."""
    faults = {
        2: "sigkill",
        7: "unpicklable_result",
        11: "raise",
        15: "segfault",
        18: "unpicklable_exception",
        21: "exit",
        25: "timeout",
    }
    with make_pool() as pool:
        # task_timeout is generous here: the worker's fallback to cloudpickle for the unpicklable result (an
        # import) is counted against the chunk's last item (see test_result_pickling_time_is_not_blamed...).
        out = pool.map_async(
            partial(tasks.kind_by_item, faults=faults),
            range(30),
            chunksize=4,
            on_error="return",
            task_timeout=1.0,
        ).get(30)
        assert pool.map(tasks.square, range(3)) == [0, 1, 4]
        assert pool.statistics()["workers"] == 2
    errors = check_others("map", out, bad=set(faults), n=30)
    for (x, kind), err in zip(sorted(faults.items()), errors):
        check_fault_error(kind, err, "map", bad=x, timeout=1.0)
