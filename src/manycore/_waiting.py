"""Waits that Ctrl-C can interrupt without breaking the pool: the one place that knows how threads sleep.

Two facts of CPython shape every wait a caller's thread makes here:

- Python runs a signal's handler (Ctrl-C's ``KeyboardInterrupt``) only when the main thread runs Python code,
  and the kernel may hand a process-directed signal to any thread that does not block it, the supervisor
  thread included. A main thread asleep on a lock with no timeout then sleeps on, and the program ignores
  Ctrl-C. So waits in the main thread wake every ``MAIN_WAKE_S``.
- The handler raises at the next bytecode boundary, which may fall inside the standard library's Python-level
  primitives: between ``threading.Condition.__enter__`` taking its lock and the ``with`` block that would free
  it, or between ``Condition.wait`` releasing its lock and the ``try`` that restores it. Measured with SIGINT
  sent from another process every 0-0.3 ms: an interrupted ``with condition:`` left the lock held 1 time in 3,
  ``Event.wait`` 1 in 1,000, and ``with lock: condition.wait()`` raised ``RuntimeError`` (a release of a lock
  not held) about 1 in 500, on 3.10, 3.11 and 3.13 alike. A held lock then hangs the supervisor thread that next
  takes it, and ``terminate()`` with it (seen in the soak run). ``with`` on a C lock and one ``acquire`` call
  are safe. So the main thread waits only through those: ``Latch`` for one-shot events, and a waiter lock of
  its own where it waits on a condition (``_imap``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# How often a wait in the main thread wakes up to let Python run a pending signal handler. Ctrl-C lands
# within this much at worst; ten wake-ups a second of a waiting program cost nothing measurable.
MAIN_WAKE_S = 0.1


def slices(timeout: float | None) -> bool:
    """Whether a wait of ``timeout`` in this thread is cut into slices: in the main thread, for no timeout or
    an ordinary one. Others (negative, NaN, past ``threading.TIMEOUT_MAX``) go to the wait as they are, which
    treats them as it does in every thread (the standard library raises OverflowError for the largest)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    return timeout is None or 0 <= timeout <= threading.TIMEOUT_MAX


def main_slice(left: float | None) -> float | None:
    """How long one wait may sleep: ``left``, or at most ``MAIN_WAKE_S`` in the main thread."""
    if not slices(left):
        return left
    return MAIN_WAKE_S if left is None else min(left, MAIN_WAKE_S)


def wait_in_slices(wait: Callable[[float | None], bool], timeout: float | None = None) -> bool:
    """``wait(timeout)`` (a latch's ``wait``, a join...) that lets the main thread handle signals meanwhile."""
    if not slices(timeout):
        return wait(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if wait(main_slice(left)):
            return True
        if left is not None and left <= MAIN_WAKE_S:
            return False


class Latch:
    """A one-shot ``threading.Event`` (set once, never cleared) whose waits are one C call each.

    Two gates, both released by ``set``. Other threads hand ``_gate`` on to each other (take it, give it
    straight back) and sleep without waking: no signal handler runs in them, so nothing can stop a hand-back.
    The main thread alone takes ``_main_gate``, in slices of ``MAIN_WAKE_S``, and keeps it: an interrupt that
    lands between its take and its return then strands nobody, and its later waits see the flag first.
    """

    __slots__ = ("_flag", "_gate", "_main_gate", "_setting")

    def __init__(self, *, is_set: bool = False) -> None:
        self._flag = is_set
        self._gate = threading.Lock()
        self._main_gate = threading.Lock()
        self._setting = threading.Lock()  # two threads may set at once (terminate and the supervisor)
        if not is_set:
            self._gate.acquire()
            self._main_gate.acquire()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._setting:
            if not self._flag:
                self._flag = True
                self._gate.release()
                self._main_gate.release()

    def wait(self, timeout: float | None = None) -> bool:
        """``Event.wait``: whether the latch is set, waiting at most ``timeout`` seconds (None: for ever)."""
        if self._flag:
            return True
        if timeout is not None:
            if timeout > threading.TIMEOUT_MAX:
                raise OverflowError("timeout value is too large")
            if not timeout > 0:  # zero, negative or NaN: a look, as Event.wait
                return self._flag
        if threading.current_thread() is threading.main_thread():
            return wait_in_slices(self._take_main_gate, timeout)
        if self._gate.acquire(timeout=-1 if timeout is None else timeout):
            self._gate.release()
            return True
        return self._flag

    def _take_main_gate(self, timeout: float | None) -> bool:
        # The flag first: a wait nested in a signal handler (on the same latch) may have taken the gate.
        return self._flag or self._main_gate.acquire(timeout=-1 if timeout is None else timeout)
