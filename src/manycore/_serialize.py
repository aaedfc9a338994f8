"""Turning functions, arguments, results and exceptions into bytes and back, with errors that name the culprit.

Everything goes through cloudpickle: it pickles importable functions and classes by reference (as fast as
``pickle`` for plain data) and pickles lambdas, closures and anything defined in ``__main__`` or a notebook by
value. Workers never import the user's ``__main__`` module, so by-value pickling is what makes such code work
with every start method, and cloudpickle's class tracking keeps a ``__main__`` class identical after a round trip.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

import cloudpickle

from .errors import RemoteTraceback, SerializationError

PROTOCOL = 5


def dumps(obj: object) -> bytes:
    return cloudpickle.dumps(obj, protocol=PROTOCOL)


def loads(data: bytes | bytearray | memoryview) -> Any:
    return pickle.loads(data)


def _describe(obj: object, exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def dumps_function(fn: object) -> bytes:
    """Pickle the task function once per call; an unpicklable one is reported before anything runs."""
    try:
        return dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        raise SerializationError(
            f"the function {name!r} cannot be pickled to send it to the workers ({_describe(fn, exc)}). "
            "Define it at module level, or make the objects it uses picklable.",
            what="function", type_name=type(fn).__qualname__, detail=_describe(fn, exc),
        ) from exc


def find_unpicklable(items: list[Any] | range, first_index: int, what: str) -> SerializationError:
    """Locate the first item that does not pickle, for an error that names it."""
    for offset, item in enumerate(items):
        try:
            dumps(item)
        except Exception as exc:
            index = first_index + offset
            return SerializationError(
                f"{what} #{index} of type {type(item).__qualname__} cannot be pickled "
                f"({_describe(item, exc)}). Pass picklable values, or build the object inside the task.",
                what=what, index=index, type_name=type(item).__qualname__, detail=_describe(item, exc),
            )
    return SerializationError(f"a {what} cannot be pickled", what=what)


def pack_exception(exc: BaseException, index: int | None) -> bytes:
    """Pickle a task's exception with its worker traceback text; fall back to a description of it."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return dumps(("exc", exc, tb))
    except Exception as pickling_exc:
        return dumps(("exc", SerializationError(
            f"item #{index}: the task raised {type(exc).__qualname__}: {exc}, and that exception cannot be "
            f"pickled back to the parent ({_describe(exc, pickling_exc)}). Its traceback:\n{tb}",
            what="exception", index=index, type_name=type(exc).__qualname__, detail=tb), tb))


def unpack_exception(blob: bytes | bytearray | memoryview) -> BaseException:
    try:
        _, exc, tb = loads(blob)
    except Exception as exc:
        return SerializationError(
            f"a task raised an exception that cannot be unpickled in the parent ({_describe(blob, exc)})",
            what="exception", detail=str(exc))
    assert isinstance(exc, BaseException)
    if not isinstance(exc, SerializationError):
        exc.__cause__ = RemoteTraceback(tb)
    return exc
