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


# The worker's namespace for code from the user's ``__main__``, which arrives by value (see ``_serialize``):
# every such function is rebuilt on this one dict, so a global set by the initializer or by a task is seen by
# all later tasks of this worker, as the names of an imported module are.
MAIN_GLOBALS: dict[str, Any] = {}


def main_function(code: Any, base_globals: dict[str, Any], name: Any, argdefs: Any, closure: Any) -> Any:
    """Rebuild a function of the parent's ``__main__`` on this worker's one ``__main__`` namespace."""
    if not MAIN_GLOBALS:
        import builtins

        MAIN_GLOBALS.update(base_globals)  # __name__, __file__, ...: what cloudpickle sends for imports
        MAIN_GLOBALS["__builtins__"] = builtins
    function: Any = type(main_function)  # types.FunctionType, without importing types
    return function(code, MAIN_GLOBALS, name, argdefs, closure)


def main_function_setstate(func: Any, state: Any) -> None:
    """Add the globals the parent sent to this worker's namespace, then let cloudpickle set the rest.

    A name the namespace has already is kept (the first value to arrive wins), as in a module imported once
    per worker: what the initializer or a task filled in place (``STATE["conn"] = ...``, a memo dict) or
    rebound lives on. Every function refers to the parent's objects by value, so telling "the parent changed
    it" from "it is the same object again" is not possible here, and an emptied ``STATE`` is a silently wrong
    result. The price: the parent rebinding a name later (a notebook cell run again) is not seen by a worker
    that has it already, as with ``multiprocessing``'s fork workers; a new pool sees it.
    """
    try:
        from cloudpickle.cloudpickle import _function_setstate  # type: ignore[import-untyped]
    except ImportError:  # cloudpickle 2.x
        from cloudpickle.cloudpickle_fast import _function_setstate  # type: ignore[import-untyped]

    attrs, slots = state
    sent = slots.pop("__globals__")
    ns = func.__globals__
    for key, value in sent.items():
        ns.setdefault(key, value)
    slots["__globals__"] = {}
    _function_setstate(func, (attrs, slots))


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
    except BaseException as pickling_exc:  # even SystemExit from a __reduce__: this item's error, not ours
        from .errors import SerializationError

        return dumps(
            (
                "exc",
                SerializationError.like(type(pickling_exc))(
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
            SerializationError.like(type(exc))(
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
