"""Exceptions raised by manycore, each a subclass of the standard exception that code already catches.

The hierarchy::

    ManycoreError
     ├── WorkerLostError        (also concurrent.futures.process.BrokenProcessPool)
     ├── TaskTimeoutError       (also multiprocessing.TimeoutError, hence TimeoutError on 3.11+)
     ├── SerializationError     (also multiprocessing.pool.MaybeEncodingError, and the standard type raised
     │                           there: the pickling error's own type, or BrokenProcessPool; see ``like``)
     ├── InitializerError       (also BrokenProcessPool: no worker can start)
     ├── PoolBrokenError        (also BrokenProcessPool: the pool's supervisor failed; the cause is attached)
     ├── PoolClosedError        (also ValueError, as multiprocessing.Pool raises after close())
     └── JournalError           (also ValueError: a journal= file this run cannot use, and why)

    RemoteTraceback             multiprocessing.pool.RemoteTraceback: the worker-side traceback, attached as
                                ``__cause__`` of a task's exception (futures get concurrent.futures's own)

A task that raises gives the caller the task's own exception (same type, same message); manycore only adds the
worker's traceback as its cause, so ``except ValueError`` keeps working and printing shows where it failed.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "InitializerError",
    "JournalError",
    "ManycoreError",
    "PoolBrokenError",
    "PoolClosedError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerLostError",
]


class ManycoreError(Exception):
    """Root of the errors that manycore itself raises (a task's own exceptions keep their type)."""


# The worker-side traceback, attached as ``__cause__`` of a task's exception: the very class that
# ``multiprocessing.Pool`` attaches, so code (and CPython's own tests) that check its type keep working.
# ``Executor`` futures carry ``concurrent.futures.process._RemoteTraceback`` instead, as ``ProcessPoolExecutor``.
RemoteTraceback: type[Exception] = multiprocessing.pool.RemoteTraceback  # type: ignore[attr-defined]


def remote_traceback(tb: str) -> Exception:
    """The cause to attach for a worker's formatted traceback, laid out as the standard library shows it."""
    return RemoteTraceback(f'\n"""\n{tb}"""')


def for_futures(error: BaseException) -> BaseException:
    """Give a task's exception the remote-traceback class that ``concurrent.futures`` attaches."""
    from concurrent.futures.process import _RemoteTraceback

    cause = error.__cause__
    if type(cause) is RemoteTraceback:
        error.__cause__ = _RemoteTraceback(vars(cause).get("tb", ""))
    return error


class WorkerLostError(ManycoreError, BrokenProcessPool):
    """The worker process died while it was running this item (SIGKILL, segfault, ``os._exit``, OOM kill).

    Attributes: ``index`` (the item's position in the input, or None for a single call), ``pid``,
    ``exitcode`` (negative for a signal, as in ``multiprocessing``) and ``signal_name`` (e.g. ``"SIGKILL"``).
    Only this item fails; the pool replaces the worker and every other item still runs.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        pid: int | None = None,
        exitcode: int | None = None,
        signal_name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.index = index
        self.pid = pid
        self.exitcode = exitcode
        self.signal_name = signal_name

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class TaskTimeoutError(ManycoreError, multiprocessing.TimeoutError):
    """An item ran longer than ``task_timeout`` seconds; its worker was killed and replaced.

    Attributes: ``index`` (position in the input) and ``timeout`` (the limit, seconds).
    """

    def __init__(self, message: str, *, index: int | None = None, timeout: float | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.timeout = timeout

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class SerializationError(ManycoreError, multiprocessing.pool.MaybeEncodingError):  # type: ignore[misc,name-defined]
    """Something could not be pickled or unpickled: the function, an argument, a result or an exception.

    Attributes: ``what`` (``"function"``, ``"argument"``, ``"result"`` or ``"exception"``), ``index`` (the item,
    when known), ``type_name`` (the type that failed) and ``detail`` (the pickling error, or for an exception
    that could not travel, its original type, message and traceback text).
    """

    # The standard exception type this error also is (see ``like``); None for SerializationError itself.
    _like: type[BaseException] | None = None

    def __init__(
        self, message: str, *, what: str = "", index: int | None = None, type_name: str = "", detail: str = ""
    ) -> None:
        # MaybeEncodingError.__init__ wants (exc, value) and formats its own message; we keep ours.
        Exception.__init__(self, message)
        self.exc = message
        self.value = type_name
        self.what = what
        self.index = index
        self.type_name = type_name
        self.detail = detail
        if isinstance(self, SystemExit):
            # Uncaught, a SystemExit whose code is a str prints it and exits with status 1, not silently 0.
            self.code = message

    def __str__(self) -> str:
        return str(self.args[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args[0]!r})"

    def __reduce__(self) -> tuple[object, ...]:
        if self._like is not None:
            return (_rebuild_like, (self._like, self.args, self.__dict__))
        return (_rebuild, (type(self), self.args, self.__dict__))

    @classmethod
    def like(cls, base: type[BaseException] | None) -> type[SerializationError]:
        """The subclass of SerializationError that is also a ``base``: what the standard library raises there.

        ``multiprocessing`` and ``concurrent.futures`` give the caller the pickling error itself (a
        ``PicklingError``, a ``TypeError``, whatever a ``__reduce__`` raised) or ``BrokenProcessPool``; an
        instance of ``SerializationError.like(type(exc))`` is caught both by that code and by ``except
        SerializationError``. Falls back to SerializationError where the two cannot be combined.
        """
        if base is None or issubclass(cls, base):
            return cls
        if issubclass(base, SerializationError):
            return base
        mixed = _MIXED.get(base)
        if mixed is None:
            name = f"SerializationError[{base.__name__}]"
            try:
                mixed = type(name, (SerializationError, base), {"__qualname__": name, "_like": base})
            except TypeError:  # e.g. two exception types with different C layouts
                mixed = SerializationError
            mixed = _MIXED.setdefault(base, mixed)
        return mixed


_MIXED: dict[type[BaseException], type[SerializationError]] = {}


class InitializerError(ManycoreError, BrokenProcessPool):
    """The pool's ``initializer`` raised in a worker, so no worker can run tasks; the cause is attached."""


class PoolBrokenError(ManycoreError, BrokenProcessPool):
    """The pool's supervisor thread failed unexpectedly, so the pool can run nothing more.

    Every call still waiting and every later call raises it; the workers have been stopped. The exception that
    stopped the supervisor is attached as ``__cause__`` (a bug in manycore, or e.g. a ``SystemExit`` raised while
    a result was unpickled in the parent). Create a new pool to go on.
    """


class PoolClosedError(ManycoreError, ValueError):
    """The pool was closed or terminated and takes no new work (a ``ValueError``, like ``multiprocessing``)."""


class JournalError(ManycoreError, ValueError):
    """A ``journal=`` file this run cannot use: written by another function or over other input, not a manycore
    journal, in use by another running map, or not writable. The message says what differs and what to do."""


def _rebuild(cls: type[BaseException], args: tuple[object, ...], state: dict[str, object]) -> BaseException:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def _rebuild_like(
    base: type[BaseException], args: tuple[object, ...], state: dict[str, object]
) -> BaseException:
    return _rebuild(SerializationError.like(base), args, state)
