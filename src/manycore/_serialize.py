"""Turning functions, arguments, results and exceptions into bytes and back, with errors that name the culprit.

Everything goes through cloudpickle: it pickles importable functions and classes by reference (as fast as
``pickle`` for plain data) and pickles lambdas, closures and anything defined in ``__main__`` or a notebook by
value. Workers never import the user's ``__main__`` module, so by-value pickling is what makes such code work
with every start method, and cloudpickle's class tracking keeps a ``__main__`` class identical after a round trip.

cloudpickle is imported on first use, not with this module: importing it (with ``inspect``, ``dataclasses`` and
``logging``) is the largest single cost of a first ``Pool()``, and deferring it to the first task lets it run
while the new pool's fork server is starting (W6).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

from ._wire import PROTOCOL, loads
from .errors import RemoteTraceback, SerializationError

__all__ = ["dumps", "dumps_frames", "dumps_function", "find_unpicklable", "loads", "unpack_exception"]


def dumps(obj: object, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None = None) -> bytes:
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=buffer_callback)
    return data


class _Frames(list[bytes]):
    """The pickler's ``file``: keeps the pickle as the list of frames the pickler writes (about 64 KiB each).

    ``dumps`` joins those frames into one fresh block per payload, and on a stream of 1 MiB chunks (W7) the
    parent spent a fifth of its time faulting such blocks in. Frames are small enough for malloc to reuse their
    memory, and a socket sends a list of buffers as one message, so they need never be joined.
    """

    def write(self, data: bytes | bytearray | pickle.PickleBuffer) -> int:
        if type(data) is not bytes:
            # A large bytearray or in-band PickleBuffer arrives as the object itself. Copy its raw memory, as
            # the pickler would: the payload must not change if the caller reuses that buffer while the chunk
            # may still be sent again.
            data = bytes(data.raw() if isinstance(data, pickle.PickleBuffer) else data)
        self.append(data)
        return len(data)


def dumps_frames(
    obj: object, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None = None
) -> list[bytes]:
    """Like ``dumps``, but returns the pickle in parts whose concatenation is the pickle."""
    import cloudpickle

    frames = _Frames()
    cloudpickle.Pickler(frames, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return frames


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def dumps_function(fn: object) -> bytes:
    """Pickle the task function once per call; an unpicklable one is reported before anything runs."""
    try:
        return dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        raise SerializationError(
            f"the function {name!r} cannot be pickled to send it to the workers ({_describe(exc)}). "
            "Define it at module level, or make the objects it uses picklable.",
            what="function",
            type_name=type(fn).__qualname__,
            detail=_describe(exc),
        ) from exc


def find_unpicklable(items: Sequence[Any], first_index: int, what: str) -> SerializationError:
    """Locate the first item that does not pickle, for an error that names it."""
    for offset, item in enumerate(items):
        try:
            dumps(item)
        except Exception as exc:
            index = first_index + offset
            return SerializationError(
                f"{what} #{index} of type {type(item).__qualname__} cannot be pickled "
                f"({_describe(exc)}). Pass picklable values, or build the object inside the task.",
                what=what,
                index=index,
                type_name=type(item).__qualname__,
                detail=_describe(exc),
            )
    return SerializationError(f"a {what} cannot be pickled", what=what)


def unpack_exception(blob: bytes | bytearray | memoryview) -> BaseException:
    try:
        _, error, tb = loads(blob)
    except Exception as exc:
        return SerializationError(
            f"a task raised an exception that cannot be unpickled in the parent ({_describe(exc)})",
            what="exception",
            detail=str(exc),
        )
    assert isinstance(error, BaseException)
    if not isinstance(error, SerializationError):
        error.__cause__ = RemoteTraceback(tb)
    return error
