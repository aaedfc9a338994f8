"""``manycore._waiting.Latch``: Event's semantics, waits that Ctrl-C cannot break, and no wake-ups for nothing."""

from __future__ import annotations

import math
import resource
import threading
import time

import pytest

import manycore
from manycore._waiting import Latch

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
    started = time.monotonic()
    assert latch.wait(10) is True
    assert time.monotonic() - started < 5
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


def test_other_threads_sleep_without_waking_while_they_wait() -> None:
    # Found by review: every waiting thread woke ten times a second (1,000 threads waiting on a result: a
    # quarter of a core). Only the main thread wakes, to run Ctrl-C's handler.
    with manycore.Pool(1, backend="thread") as pool:
        result = pool.apply_async(time.sleep, (3,))
        waiters = [threading.Thread(target=result.get, daemon=True) for _ in range(100)]
        for t in waiters:
            t.start()
        time.sleep(0.3)  # all asleep
        before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        time.sleep(1)
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before
        # Sleeping in 0.1 s slices, 100 threads switch about 1,000 times in that second.
        assert switches < 200, f"{switches} voluntary context switches in 1 s of waiting"
        result.get(10)
        for t in waiters:
            t.join(10)
