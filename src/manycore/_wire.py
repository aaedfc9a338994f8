"""Worker-side pickling: plain ``pickle`` first, cloudpickle only when needed.

Workers start from a bare interpreter, so what they import is start-up time: cloudpickle costs about 50 ms to
import, plain pickle handles nearly every result, and unpickling a by-value function from the parent imports
cloudpickle by itself when (and only when) it is needed. The parent side lives in ``_serialize``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    import pickle
else:  # the C module: pickle.py imports more (enum, re) than a worker needs at start-up
    import _pickle as pickle
if TYPE_CHECKING:
    from typing import Any

PROTOCOL = 5
loads = pickle.loads


# Objects sent once to this process by Pool.broadcast, by broadcast id (see _broadcast.py).
BROADCASTS: dict[int, object] = {}


def broadcast_value(bid: int) -> object:
    """What a broadcast handle unpickles to in a worker: the object itself, mapped from shared memory."""
    try:
        return BROADCASTS[bid]
    except KeyError:
        raise LookupError(
            f"broadcast #{bid} is not available here: it was released, or its handle was used with another pool"
        ) from None


def dumps(obj: object) -> bytes:
    """Pickle a result. Falls back to cloudpickle for what plain pickle refuses: lambdas, and classes the
    worker got by value from the parent's ``__main__`` (cloudpickle sends those back so that the parent
    resolves them to its own class)."""
    try:
        return pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:
        import cloudpickle

        data: bytes = cloudpickle.dumps(obj, protocol=PROTOCOL)
        return data


def pack_exception(exc: BaseException, index: int | None) -> bytes:
    """Pickle a task's exception with its worker traceback text; fall back to a description of it."""
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = dumps(("exc", exc, tb))
        # An exception can pickle and still fail to unpickle (an __init__ that takes other arguments than
        # it passes to Exception): check here, where its type, message and traceback are still known.
        pickle.loads(blob)
        return blob
    except Exception as pickling_exc:
        from .errors import SerializationError

        return dumps(
            (
                "exc",
                SerializationError(
                    f"item #{index}: the task raised {type(exc).__qualname__}: {exc}, and that exception cannot be "
                    f"pickled back to the parent ({type(pickling_exc).__name__}: {pickling_exc}). Its traceback:\n{tb}",
                    what="exception",
                    index=index,
                    type_name=type(exc).__qualname__,
                    detail=tb,
                ),
                tb,
            )
        )


def unpicklable_result(value: Any, index: int, exc: BaseException) -> bytes:
    from .errors import SerializationError

    return dumps(
        (
            "exc",
            SerializationError(
                f"item #{index}: the result of type {type(value).__qualname__} cannot be pickled to send it back "
                f"({type(exc).__name__}: {exc}). Return picklable values (plain data, arrays).",
                what="result",
                index=index,
                type_name=type(value).__qualname__,
                detail=str(exc),
            ),
            "",
        )
    )
