"""Ctrl-C that lands anywhere in a wait leaves no lock held: the pool terminates, other threads' waits return.

CPython runs a signal's handler at the next bytecode boundary, which may fall inside the standard library's
Python-level primitives (``Condition.__enter__`` after it took its lock, ``Condition.wait`` between its
release and its ``try``). The soak run saw a Ctrl-C'd program hang for ever: the interrupt had left an
``Event``'s lock held, and ``terminate()`` then blocked on it. Here another process sends SIGINT every
0-0.3 ms while the main thread waits, each wait taking one interrupt, many times over, with the main thread's
wake-up shortened so its waits pass through their Python code thousands of times a second. Before the fix
(manycore._waiting) each of these waits hung or raised ``RuntimeError`` within a few hundred rounds.
The thread backend keeps a pool cheap enough to make one per round; the waits are the ones every backend uses.
"""

from __future__ import annotations

import pytest

from proc_helpers import python_output

pytestmark = pytest.mark.timeout(240)

SCRIPT = r"""
import os, signal, subprocess, sys, threading, time
from concurrent.futures import TimeoutError as FuturesTimeout
import manycore
from manycore import _waiting
_waiting.MAIN_WAKE_S = 0.0002

how, rounds = sys.argv[1], int(sys.argv[2])
armed = fired = False

def handler(signum, frame):
    # One KeyboardInterrupt per armed wait, as one Ctrl-C would give; the storm's other signals are dropped.
    global armed, fired
    if armed:
        fired = True
        armed = False
        raise KeyboardInterrupt

signal.signal(signal.SIGINT, handler)
STORM = (
    "import os, random, signal, sys, time\n"
    "while True:\n"
    "    time.sleep(random.uniform(0, 0.0003))\n"
    "    os.kill(int(sys.argv[1]), signal.SIGINT)\n"
)
storm = subprocess.Popen([sys.executable, "-c", STORM, str(os.getpid())])

def comes_back(wait):
    # Another thread's wait on the same object must return or raise, not block on a lock left held.
    t = threading.Thread(target=lambda: _quietly(wait), daemon=True)
    t.start()
    t.join(15)
    return not t.is_alive()

def poll(future):
    # result(timeout=0) in a loop: each call passes through the whole of result's code.
    while True:
        try:
            return future.result(timeout=0)
        except FuturesTimeout:
            pass

def _quietly(wait):
    try:
        wait()
    except BaseException:
        pass

swallowed = 0
try:
    for i in range(rounds):
        if how.startswith("future"):
            pool = manycore.Executor(2, backend="thread")
            future = pool.submit(time.sleep, 0.05)
            wait, other = future.result, lambda: future.result(timeout=5)
            if how == "future-poll":
                wait = lambda: poll(future)
        else:
            pool = manycore.Pool(2, backend="thread")
            if how == "get":
                result = pool.apply_async(time.sleep, (0.3,))
                wait, other = result.get, lambda: result.get(timeout=5)
            elif how == "imap":
                it = pool.imap(time.sleep, [0.3])
                wait = other = lambda: next(it)
            else:
                pool.apply_async(time.sleep, (0.3,))
                pool.close()
                wait = other = pool.join
        try:
            fired = False
            armed = True
            wait()
            armed = False
            # CPython prints and drops an exception raised in a weakref callback or a __del__ (seen on 3.10:
            # "Exception ignored in: WeakKeyDictionary... remove"): that interrupt never reached the wait.
            assert fired, f"round {i}: the wait returned before any interrupt"
            swallowed += 1
        except KeyboardInterrupt:
            armed = False
        except AssertionError:
            raise
        except BaseException as exc:
            armed = False
            raise AssertionError(f"round {i}: Ctrl-C raised {exc!r}, not KeyboardInterrupt") from exc
        assert comes_back(other), f"round {i}: another thread's wait blocked after the interrupt"
        if how.startswith("future"):
            pool.shutdown(wait=False)
        else:
            pool.terminate()
finally:
    storm.kill()
    storm.wait()
print("rounds", i + 1)
assert swallowed < rounds // 10, f"{swallowed} of {rounds} interrupts never reached the wait"
"""


@pytest.mark.parametrize(
    ("how", "rounds"), [("get", 1000), ("imap", 800), ("join", 1000), ("future", 300), ("future-poll", 300)]
)
def test_a_storm_of_interrupts_never_leaves_a_lock_held(how: str, rounds: int) -> None:
    assert python_output(SCRIPT, how, str(rounds), timeout=200).split() == ["rounds", str(rounds)]
