"""Pool and Executor lifecycle as the standard library has it: empty maps and join, interpreter exit, submit
during shutdown, references held after a call, submit cost, stdout order, imap input read in the background."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

import manycore
from manycore.errors import PoolClosedError

from tasks import square

pytestmark = pytest.mark.timeout(60)


def run_script(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports this tree's manycore; a hang fails the test."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "PYTHONUNBUFFERED")},
    )


# ---- 1. map of nothing, then close and join ---------------------------------------------------------------


@pytest.mark.parametrize("call", ["map", "map_async", "starmap"])
def test_empty_map_then_close_join_returns(start_method: str, call: str, no_leftover_processes: None) -> None:
    pool = manycore.Pool(2, start_method=start_method)
    try:
        if call == "map":
            assert pool.map(square, []) == []
        elif call == "map_async":
            assert pool.map_async(square, []).get(10) == []
        else:
            assert pool.starmap(square, []) == []
        assert pool.map(square, [3]) == [9]
        pool.close()
        done = threading.Event()
        threading.Thread(target=lambda: (pool.join(), done.set()), daemon=True).start()
        assert done.wait(20), "join() hung after a map of an empty input"
        assert pool.statistics()["jobs_active"] == 0
    finally:
        pool.terminate()


# ---- 7. max_workers=0 --------------------------------------------------------------------------------------


def test_max_workers_zero_message_matches_stdlib() -> None:
    with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
        manycore.Executor(max_workers=0)
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        manycore.Executor(max_workers=-1)
    with pytest.raises(ValueError, match="processes must be at least 1"):
        manycore.Pool(0)


# ---- 8. standard streams flushed before workers start ---------------------------------------------------


@pytest.mark.parametrize("kind", ["Pool", "Executor"])
def test_output_before_the_pool_comes_first(start_method: str, kind: str, tmp_path: object) -> None:
    out = os.path.join(str(tmp_path), "out.txt")
    code = f"""
        import sys, manycore
        def init():
            print("worker", flush=True)
        print("before")
        print("before-err", file=sys.stderr)
        if {kind!r} == "Pool":
            with manycore.Pool(1, initializer=init, start_method={start_method!r}) as p:
                p.apply(abs, (1,))
        else:
            with manycore.Executor(1, initializer=init, start_method={start_method!r}) as ex:
                ex.submit(abs, 1).result()
    """
    with open(out, "w") as f:
        subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=f,
            stderr=subprocess.PIPE,
            check=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # stdout buffered, as usual
        )
    with open(out) as f:
        lines = f.read().split()
    assert lines == ["before", "worker"]


# ---- 2. interpreter exit -----------------------------------------------------------------------------------


# The task of the exit tests: slow enough that the script reaches its end with the work still pending.
SLOW_PRINT = (
    "import time, manycore\ndef slow_print(word):\n    time.sleep(0.3)\n    print(word, flush=True)\n"
)


def test_executor_not_shut_down_runs_pending_work_at_exit(start_method: str) -> None:
    proc = run_script(
        SLOW_PRINT
        + textwrap.dedent(
            f"""
        ex = manycore.Executor(2, start_method={start_method!r})
        for word in ["apple", "pear", "plum"]:
            ex.submit(slow_print, word)
        """
        )
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == ["apple", "pear", "plum"]


def test_dropped_executor_still_runs_its_work(start_method: str) -> None:
    proc = run_script(
        SLOW_PRINT
        + textwrap.dedent(
            f"""
        import gc
        manycore.Executor(1, start_method={start_method!r}).submit(slow_print, "apple")
        gc.collect()
        """
        )
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["apple"]


def test_unclosed_pool_is_terminated_at_exit_with_stdlib_warning(start_method: str) -> None:
    proc = run_script(
        f"""
        import time, warnings, manycore
        warnings.simplefilter("always")
        def slow_print(word):
            time.sleep(30)
            print(word, flush=True)
        pool = manycore.Pool(2, start_method={start_method!r})
        pool.apply_async(slow_print, ("apple",))
        time.sleep(0.5)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "ResourceWarning: unclosed running multiprocessing pool" in proc.stderr


def test_unclosed_pool_warning_is_a_resource_warning() -> None:
    pool = manycore.Pool(1)
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del pool
        gc.collect()


# ---- 3. submit from an atexit hook ------------------------------------------------------------------------


def test_submit_after_interpreter_shutdown_raises(start_method: str) -> None:
    # As CPython's test_concurrent_futures: the hook runs after the executor's own exit handling.
    proc = run_script(
        f"""
        import atexit
        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise
        import manycore
        t = manycore.Executor(5, start_method={start_method!r})
        t.submit(id, 42).result()
        """,
        timeout=60,
    )
    assert "RuntimeError: cannot schedule new futures" in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "runtime-error"


# ---- 4. no references kept to arguments and consumed results --------------------------------------------


class Token:
    """An object a weakref can point to, that pickles by value."""

    def __init__(self, n: int) -> None:
        self.n = n


def make_token(x: Token) -> Token:
    return Token(x.n + 1)


def _dies(ref: weakref.ref[Token]) -> bool:
    for _ in range(50):
        gc.collect()
        if ref() is None:
            return True
        time.sleep(0.02)
    return False


def test_executor_keeps_no_argument_or_result(start_method: str, no_leftover_processes: None) -> None:
    with manycore.Executor(2, start_method=start_method) as ex:
        arg = Token(1)
        future = ex.submit(make_token, arg)
        result = future.result(30)
        assert result.n == 2
        arg_ref, result_ref = weakref.ref(arg), weakref.ref(result)
        del arg, result, future
        assert _dies(arg_ref), "the executor keeps a submitted argument"
        assert _dies(result_ref), "the executor keeps a result"

        args = [Token(i) for i in range(6)]
        arg_refs = [weakref.ref(a) for a in args]
        results = ex.map(make_token, args)
        del args
        first = next(results)
        first_ref = weakref.ref(first)
        del first
        assert _dies(first_ref), "Executor.map keeps a result already consumed"
        rest = list(results)
        assert [r.n for r in rest] == [2, 3, 4, 5, 6]
        del rest, results
        assert all(_dies(r) for r in arg_refs), "Executor.map keeps its arguments"


def test_pool_keeps_no_argument_of_a_finished_call(start_method: str, no_leftover_processes: None) -> None:
    with manycore.Pool(2, start_method=start_method) as pool:
        args = [Token(i) for i in range(5)]
        refs = [weakref.ref(a) for a in args]
        async_result = pool.map_async(make_token, args)
        assert [r.n for r in async_result.get(30)] == [1, 2, 3, 4, 5]
        del args
        assert all(_dies(r) for r in refs), "a finished map_async keeps its input"
        one = Token(7)
        applied = pool.apply_async(make_token, (one,))
        assert applied.get(30).n == 8
        one_ref = weakref.ref(one)
        del one
        assert _dies(one_ref), "a finished apply_async keeps its arguments"


# ---- 5. submit costs the same however many futures are pending -----------------------------------------


def _submit_cost(ex: manycore.Executor, n: int) -> float:
    # Per-submit cost measured with the pool busy, so that every future stays pending.
    # The collector off while timing: a full collection walks every live object, and 8,000 pending futures make
    # each one several times longer; that is the interpreter's cost, not submit's (CI measured 4.7x with it on).
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        futures = [ex.submit(square, i) for i in range(n)]
        cost = (time.perf_counter() - start) / n
    finally:
        gc.enable()
    for f in futures:
        f.cancel()
    return cost


def test_submit_cost_does_not_grow_with_pending_futures(no_leftover_processes: None) -> None:
    ex = manycore.Executor(1)
    try:
        blocker = ex.submit(time.sleep, 30)
        _submit_cost(ex, 500)  # warm up
        small = min(_submit_cost(ex, 1000) for _ in range(3))
        large = min(_submit_cost(ex, 8000) for _ in range(2))
        # Quadratic work makes 8,000 cost 8x more per submit than 1,000; allow wide noise on a loaded machine.
        assert large < small * 4, (
            f"per-submit cost {small * 1e6:.1f} µs at 1,000, {large * 1e6:.1f} µs at 8,000"
        )
        blocker.cancel()
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        ex._scheduler.terminate()


# ---- 9 and 10. imap reads its input in the background -------------------------------------------------


class Boom(Exception):
    pass


def failing_source(n: int) -> Iterator[int]:
    yield from range(n)
    raise Boom(f"after {n}")


@pytest.mark.parametrize("chunksize", [1, 2, 3, 4, "auto"])
@pytest.mark.parametrize("ordered", [True, False])
def test_imap_source_error_at_its_position(pool: manycore.Pool, chunksize: object, ordered: bool) -> None:
    for n in (0, 1, 5, 7, 13, 37):
        it = (pool.imap if ordered else pool.imap_unordered)(square, failing_source(n), chunksize=chunksize)
        got = []
        with pytest.raises(Boom, match=f"after {n}"):
            got.extend(it)  # keeps the values read before the error
        assert sorted(got) == [i * i for i in range(n)]
        with pytest.raises(StopIteration):
            next(it)


def slow_source(n: int, delay: float, seen: list[int]) -> Iterator[int]:
    for i in range(n):
        time.sleep(delay)
        seen.append(i)
        yield i


def test_imap_returns_at_once_and_first_result_follows_first_item(start_method: str) -> None:
    seen: list[int] = []
    with manycore.Pool(2, start_method=start_method) as pool:
        pool.map(square, range(4))  # workers started
        it = pool.imap(square, slow_source(8, 0.3, seen), chunksize=1)
        # Reading the window (3 chunks per worker: 6 items, 1.8 s of input) in the call is what this forbids.
        assert len(seen) < 3, f"imap() read {len(seen)} items before returning"
        assert next(it) == 0
        assert len(seen) < 6, f"the first result came after {len(seen)} items were read"
        assert list(it) == [i * i for i in range(1, 8)]


def blocked_source(event: threading.Event) -> Iterator[int]:
    yield 1
    yield 2
    event.wait()  # blocks forever (until the test ends)
    yield 3


def test_generator_blocked_forever_does_not_block_terminate(
    start_method: str, no_leftover_processes: None
) -> None:
    release = threading.Event()
    try:
        pool = manycore.Pool(2, start_method=start_method)
        it = pool.imap(square, blocked_source(release), chunksize=1)
        assert next(it) == 1
        assert next(it) == 4
        done = threading.Event()

        def stop() -> None:
            pool.terminate()
            pool.join()
            done.set()

        threading.Thread(target=stop, daemon=True).start()
        assert done.wait(20), "terminate() + join() hung on a blocked generator"
        with pytest.raises(PoolClosedError):
            next(it)
        del it
        gc.collect()
    finally:
        release.set()


def test_close_join_waits_for_an_imap_input_then_every_result_is_there(
    start_method: str, no_leftover_processes: None
) -> None:
    """As multiprocessing.Pool: after close(), join() waits until an imap's input is read to its end and every
    result is in, whether or not anyone reads them; they can be read after join(). (A generator that blocks for
    ever therefore blocks join(), as it does multiprocessing's; terminate() does not wait for it.)"""
    release = threading.Event()
    pool = manycore.Pool(2, start_method=start_method)
    try:
        it = pool.imap(square, blocked_source(release), chunksize=1)
        assert next(it) == 1
        pool.close()
        done = threading.Event()

        def join() -> None:
            pool.join()
            done.set()

        threading.Thread(target=join, daemon=True).start()
        assert not done.wait(1), "join() returned while the input was still to be read"
        release.set()
        assert done.wait(30), "join() hung after the input ended"
        assert list(it) == [4, 9]
    finally:
        release.set()
        pool.terminate()


@pytest.mark.parametrize("call", ["imap", "imap_unordered", "executor_map"])
def test_results_of_a_lazy_map_survive_close_and_join(
    start_method: str, call: str, no_leftover_processes: None
) -> None:
    """`it = pool.imap(f, items); pool.close(); pool.join(); list(it)` and Executor.map read after the `with`
    block: every result, as the standard library gives (it stopped after the first window, then hung)."""
    n = 500
    if call == "executor_map":
        with manycore.Executor(2, start_method=start_method) as ex:
            results = ex.map(square, range(n))
        assert list(results) == [i * i for i in range(n)]
        return
    pool = manycore.Pool(2, start_method=start_method)
    it = getattr(pool, call)(square, iter(range(n)), chunksize=1)
    pool.close()
    pool.join()
    got = list(it)
    assert sorted(got) == [i * i for i in range(n)]
    if call == "imap":
        assert got == [i * i for i in range(n)]


def counting_source(seen: list[int]) -> Iterator[int]:
    for i in range(10**6):
        seen.append(i)
        yield i


def feeders() -> int:
    return sum(t.name == "manycore-imap-feeder" for t in threading.enumerate())


def test_imap_feeder_stops_on_close_and_garbage(pool: manycore.Pool) -> None:
    for how in ("close", "del", "end"):
        before = feeders()
        if how == "end":
            assert list(pool.imap(square, iter(range(50)), chunksize=3)) == [i * i for i in range(50)]
            for _ in range(100):
                if feeders() < before + 1:
                    break
                time.sleep(0.02)
            assert feeders() <= before
            continue
        seen: list[int] = []
        it = pool.imap(square, counting_source(seen), chunksize=1)
        assert next(it) == 0
        if how == "close":
            it.close()
        else:
            del it
            gc.collect()
        time.sleep(0.3)
        count = len(seen)
        time.sleep(0.3)
        assert len(seen) == count, f"the input is still read after {how}"
        assert count < 1000
        for _ in range(100):
            if feeders() <= before:
                break
            time.sleep(0.02)
        assert feeders() <= before, f"the feeder thread outlives the iterator after {how}"


# ---- 6. Python 3.14's ProcessPoolExecutor additions, on every Python ------------------------------------


def test_map_buffersize_validated_as_python_3_14(no_leftover_processes: None) -> None:
    with manycore.Executor(1) as ex:
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            ex.map(square, [1], buffersize=1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            ex.map(square, [1], buffersize=True)
        with pytest.raises(ValueError, match=r"buffersize must be None or > 0"):
            ex.map(square, [1], buffersize=0)
        assert list(ex.map(square, range(5), buffersize=1)) == [0, 1, 4, 9, 16]


def test_map_buffersize_bounds_the_input_read_ahead(start_method: str, no_leftover_processes: None) -> None:
    seen: list[int] = []
    with manycore.Executor(2, start_method=start_method) as ex:
        results = ex.map(square, counting_source(seen), buffersize=3, chunksize=1)
        assert next(results) == 0
        time.sleep(0.5)  # room for the feeder to read ahead, were it not bounded
        # 3 in flight ahead of the consumer, and at most the one just handed over.
        assert len(seen) <= 4, seen
        assert [next(results) for _ in range(5)] == [1, 4, 9, 16, 25]
        time.sleep(0.3)
        assert len(seen) <= 9, seen
        del results


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers(start_method: str, method: str, no_leftover_processes: None) -> None:
    ex = manycore.Executor(2, start_method=start_method)
    running = [ex.submit(time.sleep, 30) for _ in range(2)]
    time.sleep(0.5)  # both running
    pending = [ex.submit(square, i) for i in range(5)]
    t0 = time.monotonic()
    getattr(ex, method)()
    assert time.monotonic() - t0 < 15
    # Those still queued are cancelled; those already sent to a busy worker (2 per worker) fail, as in 3.14.
    assert sum(f.cancelled() for f in pending) >= 1
    assert all(f.cancelled() or f.exception(10) is not None for f in pending)
    for f in running:
        with pytest.raises(Exception):  # noqa: B017 - the pool stopped: any failure, never a hang
            f.result(10)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(square, 1)
    ex.shutdown()


def test_child_forked_by_the_program_exits_without_waiting_for_the_parents_executor() -> None:
    proc = run_script(
        """
        import os, sys, manycore
        ex = manycore.Executor(1)
        ex.submit(abs, 1).result()
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # runs the exit hooks: the parent's executor is not this process's to wait for
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        ex.shutdown()
        """,
        timeout=30,
    )
    assert proc.stdout.split() == ["child", "0"], proc.stderr
