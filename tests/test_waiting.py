"""``manycore._waiting.Latch``: Event's semantics, waits that Ctrl-C cannot break, and no wake-ups for nothing."""

from __future__ import annotations

import math
import threading
import time

import pytest

import manycore
from manycore._waiting import Latch

from proc_helpers import python_output

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("timeout", [0, -1, -math.inf, math.nan, 0.01])
@pytest.mark.parametrize("in_main", [True, False])
def test_timeouts_behave_as_event_wait(timeout: float, in_main: bool) -> None:
    got: list[tuple[bool, bool]] = []

    def compare() -> None:
        got.append((Latch().wait(timeout), threading.Event().wait(timeout)))
        done = Latch()
        done.set()
        event = threading.Event()
        event.set()
        got.append((done.wait(timeout), event.wait(timeout)))

    if in_main:
        compare()
    else:
        t = threading.Thread(target=compare)
        t.start()
        t.join()
    assert got == [(False, False), (True, True)]


def test_a_timeout_too_large_is_refused_as_by_event() -> None:
    with pytest.raises(OverflowError):
        threading.Event().wait(threading.TIMEOUT_MAX * 2)
    with pytest.raises(OverflowError):
        Latch().wait(threading.TIMEOUT_MAX * 2)


def test_set_wakes_every_waiter_main_and_others() -> None:
    latch = Latch()
    woke: list[bool] = []
    waiters = [threading.Thread(target=lambda: woke.append(latch.wait())) for _ in range(20)]
    for t in waiters:
        t.start()
    threading.Timer(0.2, latch.set).start()
    assert latch.wait(10) is True
    for t in waiters:
        t.join(10)
    assert woke == [True] * 20
    assert latch.is_set() and latch.wait() and latch.wait(0)


def test_set_twice_at_once_is_harmless() -> None:
    latch = Latch()
    barrier = threading.Barrier(8)

    def set_it() -> None:
        barrier.wait()
        latch.set()

    setters = [threading.Thread(target=set_it) for _ in range(8)]
    for t in setters:
        t.start()
    for t in setters:
        t.join()
    assert latch.wait(1)


def _switches(threads: list[threading.Thread]) -> int:
    """Voluntary context switches of these threads alone (Linux keeps a count per thread)."""
    total = 0
    for t in threads:
        with open(f"/proc/self/task/{t.native_id}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def test_other_threads_sleep_without_waking_while_they_wait() -> None:
    # Found by review: every waiting thread woke ten times a second (1,000 threads waiting on a result: a
    # quarter of a core). Only the main thread wakes, to run Ctrl-C's handler. Counted per waiting thread:
    # the process's own total also counts whatever other threads a test run has left behind.
    with manycore.Pool(1, backend="thread") as pool:
        result = pool.apply_async(time.sleep, (3,))
        waiters = [threading.Thread(target=result.get, daemon=True) for _ in range(100)]
        for t in waiters:
            t.start()
        time.sleep(0.3)  # all asleep
        before = _switches(waiters)
        time.sleep(1)
        switches = _switches(waiters) - before
        # Sleeping in 0.1 s slices, 100 threads switch about 1,000 times in that second.
        assert switches < 50, f"{switches} voluntary context switches of 100 waiting threads in 1 s"
        result.get(10)
        for t in waiters:
            t.join(10)


@pytest.mark.parametrize("how", ["get", "future"])
def test_a_signal_handler_waiting_on_the_same_result_does_not_strand_the_outer_wait(how: str) -> None:
    # Found by review: the handler's wait took the main thread's gate, and the interrupted wait, which only
    # tried the gate again, slept for ever.
    out = python_output(
        """
import signal, sys, time
import manycore
if sys.argv[1] == "future":
    pool = manycore.Executor(1, backend="thread")
    get = pool.submit(time.sleep, 0.5).result
else:
    pool = manycore.Pool(1, backend="thread")
    get = pool.apply_async(time.sleep, (0.5,)).get
signal.signal(signal.SIGALRM, lambda *_: print("handler", get(), flush=True))
signal.setitimer(signal.ITIMER_REAL, 0.1)
print("outer", get())  # before the fix: asleep for ever, past the subprocess's timeout
""",
        how,
        timeout=30,
    )
    assert out.split() == ["handler", "None", "outer", "None"]


def test_a_future_cancelled_before_its_callbacks_ran_reports_it_at_once() -> None:
    # Found by review: Ctrl-C inside cancel() after the state changed and before the done-callbacks ran left
    # the latch unset, and result() in the main thread waited for it instead of reading the state.
    out = python_output(
        """
import signal, time
from concurrent.futures import CancelledError
from manycore._results import _Future
future = _Future()
notify = future._condition.notify_all
def notify_then_interrupt():
    notify()
    signal.raise_signal(signal.SIGINT)
future._condition.notify_all = notify_then_interrupt
try:
    future.cancel()
except KeyboardInterrupt:
    pass
try:
    future.result()  # before the fix: asleep for ever, past the subprocess's timeout
except CancelledError:
    print("cancelled")
""",
        timeout=30,
    )
    assert out.split() == ["cancelled"]


def test_a_future_outcome_matches_the_standard_one_even_for_a_falsy_exception() -> None:
    from concurrent.futures import Future

    from manycore._results import _Future

    class Falsy(Exception):
        def __len__(self) -> int:
            return 0

    ours: Future[int] = _Future()
    theirs: Future[int] = Future()
    for future in (ours, theirs):
        future.set_exception(Falsy())
    assert ours.result(0) is None and theirs.result(0) is None  # the standard library tests its truth
    assert isinstance(ours.exception(0), Falsy) and isinstance(theirs.exception(0), Falsy)


def test_a_timeout_kept_by_the_caller_does_not_keep_the_future() -> None:
    import gc
    import weakref
    from concurrent.futures import TimeoutError as FuturesTimeout

    from manycore._results import _Future

    future: _Future[int] = _Future()
    ref = weakref.ref(future)
    gc.disable()
    try:
        try:
            future.result(timeout=0.01)
        except FuturesTimeout as exc:
            kept = exc
        del future
        assert ref() is None, "the TimeoutError's traceback keeps the future alive"
        del kept
    finally:
        gc.enable()
