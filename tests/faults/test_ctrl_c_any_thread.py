"""Ctrl-C reaches a program blocked in a pool's wait whichever thread the kernel hands the signal to.

A process-directed SIGINT goes to any thread that does not block it. Handed to the supervisor thread, it only
sets Python's flag; a main thread asleep on a lock with no timeout never ran the handler, and the program
ignored Ctrl-C (the soak run saw a child still running 30 s after it). Here the main thread blocks SIGINT
itself, so the kernel must pick another thread: the pool's.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from proc_helpers import python_output

pytestmark = pytest.mark.timeout(90)

SCRIPT = """
import os, signal, sys, threading, time
import manycore

def slow(x):
    time.sleep(60)
    return x

def interrupt_soon():
    # Created after the main thread blocked SIGINT: this thread blocks it too, so it goes to the pool's.
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

how = sys.argv[1]
pool = manycore.Executor(2) if how in ("future", "shutdown") else manycore.Pool(2)
started = time.monotonic()
try:
    if how == "get":
        result = pool.map_async(slow, range(2), chunksize=1)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); interrupt_soon()
        result.get()
    elif how == "imap":
        it = pool.imap(slow, range(2), chunksize=1)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); interrupt_soon()
        next(it)
    elif how == "apply":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); interrupt_soon()
        pool.apply(slow, (1,))
    elif how == "join":
        pool.map_async(slow, range(2), chunksize=1)
        pool.close()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); interrupt_soon()
        pool.join()
    elif how == "future":
        future = pool.submit(slow, 1)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); interrupt_soon()
        future.result()
    elif how == "shutdown":
        pool.submit(slow, 1)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); interrupt_soon()
        pool.shutdown(wait=True)
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - started:.1f} s", flush=True)
    pool.terminate() if hasattr(pool, "terminate") else pool.shutdown(wait=False, cancel_futures=True)
"""


@pytest.mark.parametrize("how", ["get", "imap", "apply", "join", "future", "shutdown"])
def test_ctrl_c_handed_to_the_pools_thread_interrupts_the_wait(how: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), how], capture_output=True, text=True, timeout=15
    )
    assert proc.stdout.startswith("interrupted after "), (proc.stdout, proc.stderr[-2000:])
    assert float(proc.stdout.split()[2]) < 5, proc.stdout  # a hang guard: the wait ends in 0.1-0.6 s


FUTURE_SCRIPT = """
import gc, signal, sys, threading, time, weakref
import manycore

def slow(x):
    time.sleep(x)
    return x

def fail(x):
    raise ValueError(x)

def alarm(*_):
    raise TimeoutError("alarm")

with manycore.Executor(2) as ex:
    # A signal handler's TimeoutError reaches the caller at once: the sliced wait catches none.
    signal.signal(signal.SIGALRM, alarm)
    for wait in ("result", "exception"):
        future = ex.submit(slow, 1.5)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            getattr(future, wait)()
            print(wait, "returned")
        except TimeoutError as exc:
            # While the task still ran: the sliced wait did not hold the alarm's error back until it ended.
            print(wait, "raised", exc, "early" if not future.done() else "late")
        future.result()
    # A failed future is not kept alive by the frames of its raised error (gc off: refcounts only).
    gc.disable()
    future = ex.submit(fail, 1)
    try:
        future.result()
    except ValueError:
        pass
    ref = weakref.ref(future)
    del future
    print("collected", ref() is None)
    gc.enable()
    # A timeout too large for the platform is refused the same way in every thread.
    seen = []
    def big():
        try:
            ex.submit(slow, 0.2).result(float("inf"))
            seen.append("returned")
        except OverflowError:
            seen.append("OverflowError")
    big()
    thread = threading.Thread(target=big)
    thread.start()
    thread.join()
    print(*seen)
"""


def test_futures_keep_the_standard_librarys_behaviour() -> None:
    """The sliced wait of a future's result/exception (found by a review): an alarm's TimeoutError is not taken
    for a slice's end, a failed future is freed by reference counting, and a huge timeout is refused in every
    thread."""
    assert python_output(FUTURE_SCRIPT).splitlines() == [
        "result raised alarm early",
        "exception raised alarm early",
        "collected True",
        "OverflowError OverflowError",
    ]
