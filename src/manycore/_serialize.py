"""Turning functions, arguments, results and exceptions into bytes and back, with errors that name the culprit.

cloudpickle does the pickling: it pickles importable functions and classes by reference (as fast as ``pickle``
for plain data) and pickles lambdas, closures and anything defined in ``__main__`` or a notebook by value. Workers never import the user's ``__main__`` module, so by-value pickling is what makes such code work
with every start method, and cloudpickle's class tracking keeps a ``__main__`` class identical after a round trip.

cloudpickle is imported on first need, not with this module: importing it (with ``inspect``, ``dataclasses`` and
``typing``, ~15 ms) was the largest single cost on the path of a first ``Pool()`` and its first task (W6). Until
something needs it, payloads of built-in data (None, bool, int, float, complex, str, bytes, bytearray, tuple,
list, dict, set, frozenset, range, slice) and functions or classes that pickle by name go through the standard
pickler (``_Plain``), which writes for them the same pickle cloudpickle would (tests/test_serialize.py compares
the bytes); anything else (an instance of any other class, a ``__main__`` or local function, an out-of-band
buffer) makes that attempt give up, and cloudpickle pickles it: at worst one payload is pickled twice, once per
process. Once cloudpickle is imported, by us or by the program, it pickles everything.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import types
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ClassVar

from ._wire import PROTOCOL, loads
from .errors import SerializationError, remote_traceback

__all__ = [
    "dumps",
    "dumps_frames",
    "dumps_function",
    "find_unpicklable",
    "loads",
    "name_item",
    "unloadable_error",
    "unpack_exception",
]


_PICKLER: Any = None


def _pickler() -> Any:
    """cloudpickle's Pickler, with two changes for code from the user's ``__main__`` (built on first use).

    - Functions whose globals are ``__main__``'s are rebuilt in the worker by ``_wire.main_function``, on one
      namespace per worker instead of a fresh copy per pickle: the initializer's globals are the tasks' globals.
    - Code objects keep their real ``co_filename`` (cloudpickle 3.1 writes ``<dynamic-code>``), so remote
      tracebacks name the user's file and line, and show the source line (linecache reads the file).
    """
    global _PICKLER
    if _PICKLER is None:
        import types
        from collections import ChainMap

        import cloudpickle

        from ._wire import main_function, main_function_setstate

        # Absent before cloudpickle 3, which kept co_filename anyway.
        code_reduce: Any = getattr(cloudpickle.cloudpickle, "_code_reduce", None)

        def reduce_code(code: types.CodeType) -> tuple[Any, ...]:
            constructor, args = code_reduce(code)
            # co_filename is the first str among the arguments (after ints, bytes and tuples), whatever the
            # Python version's argument order.
            # Compared as str only: ``"..." == b"..."`` warns under ``python -b`` and raises under ``-bb``.
            args = tuple(code.co_filename if type(a) is str and a == "<dynamic-code>" else a for a in args)
            return constructor, args

        table = cloudpickle.Pickler.dispatch_table
        if code_reduce is not None:
            # Merged into cloudpickle's own first map, not chained in front of it: the pickler looks up every
            # non-builtin object's type in this table, and each map of a ChainMap is one more lookup.
            table = ChainMap({**table.maps[0], types.CodeType: reduce_code}, *table.maps[1:])

        class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
            dispatch_table: ClassVar[ChainMap[Any, Any]] = table

            def _dynamic_function_reduce(self, func: types.FunctionType) -> tuple[Any, ...]:
                reduced: tuple[Any, ...] = super()._dynamic_function_reduce(func)
                if func.__globals__.get("__name__") == "__main__":
                    return (main_function, *reduced[1:5], main_function_setstate)
                return reduced

        _PICKLER = Pickler
    return _PICKLER


class _NotPlain(Exception):
    """The standard pickler might not pickle this as cloudpickle would: cloudpickle must."""


def _refuse(_: object) -> bool:
    raise _NotPlain


def _by_name(obj: object) -> bool:
    """Whether cloudpickle would pickle this function or class by reference: importable by its name."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module_name or module_name == "__main__" or not qualname or "<" in qualname:
        return False
    found: object = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is obj


# Python functions, built-in functions, classes (not metaclasses'): saved by name when importable by it.
_GLOBALS = (type(_by_name), type(len), type)
# Built-in values whose reduction names only their class: a map over a range sends slices of it, and an
# attempt that gave up there put cloudpickle's import on the first map's clock (W1: 13% slower).
_VALUES = (range, slice, complex)
# cloudpickle rebuilds the classes of the ``types`` module with its own ``_builtin_type``, not by name.
_TYPES_CLASSES = frozenset(c for c in vars(types).values() if type(c) is type)


class _Plain(pickle.Pickler):
    # The C pickler saves None, bool, int, float, bytes, str, dict, set, frozenset, list, tuple, bytearray and
    # PickleBuffer itself, as cloudpickle's does, and asks reducer_override about every other object.
    def reducer_override(self, obj: object) -> Any:
        kind = type(obj)
        if kind in _VALUES or (kind in _GLOBALS and obj not in _TYPES_CLASSES and _by_name(obj)):
            return NotImplemented  # saved as cloudpickle saves it: by its reduction, or by module and name
        raise _NotPlain


def _plain(file: Any, obj: object, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None) -> bool:
    """Pickle ``obj`` into ``file`` with ``_Plain`` while cloudpickle is not loaded; False: cloudpickle must."""
    # Once cloudpickle is loaded, by us or by the program (which may have registered by-value modules), it
    # pickles everything.
    if _PICKLER is not None or "cloudpickle" in sys.modules:
        return False
    refuse = None if buffer_callback is None else _refuse  # out-of-band buffers: the caller's collector's
    try:
        _Plain(file, protocol=PROTOCOL, buffer_callback=refuse).dump(obj)
    except Exception:  # _NotPlain, or what cloudpickle may pickle after all (e.g. types.FunctionType)
        return False
    return True


def dumps(obj: object, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None = None) -> bytes:
    file = io.BytesIO()
    if not _plain(file, obj, buffer_callback):
        file = io.BytesIO()
        _pickler()(file, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return file.getvalue()


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
    frames = _Frames()
    if not _plain(frames, obj, buffer_callback):
        frames = _Frames()
        _pickler()(frames, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return frames


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def dumps_function(fn: object) -> bytes:
    """Pickle the task function once per call; an unpicklable one is reported before anything runs."""
    try:
        return dumps(fn)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        raise SerializationError.like(type(exc))(
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
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            index = first_index + offset
            # The pickling error's own type, as multiprocessing and concurrent.futures give it to the caller.
            return SerializationError.like(type(exc))(
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
    except BaseException as exc:  # even SystemExit from a __reduce__: the item's error, not this thread's
        if isinstance(exc, KeyboardInterrupt):
            raise
        # BrokenProcessPool: what concurrent.futures raises when it cannot unpickle what a worker sent.
        return SerializationError.like(BrokenProcessPool)(
            f"a task raised an exception that cannot be unpickled in the parent ({_describe(exc)})",
            what="exception",
            detail=str(exc),
        )
    assert isinstance(error, BaseException)
    if not isinstance(error, SerializationError):
        error.__cause__ = remote_traceback(tb)
    return error


def unloadable_error(index: int, what: str, text: str) -> SerializationError:
    """An item whose argument (``text``: the worker's traceback of the failure) did not unpickle in the worker.

    A ``BrokenProcessPool`` too, as ``concurrent.futures`` raises there; the worker itself lives on.
    """
    last = text.rstrip().rsplit("\n", 1)[-1]
    return SerializationError.like(BrokenProcessPool)(
        f"{what} #{index} cannot be unpickled in the worker ({last}). Pass values that unpickle in a fresh "
        f"process. The worker's traceback:\n{text}",
        what=what,
        index=index,
        detail=text,
    )


def name_item(error: BaseException, index: int) -> None:
    """Add a note naming the failed item of a map to its exception, without changing its type or message."""
    if isinstance(error, SerializationError):
        if error.index is not None:
            return  # its message names the item already
        error.index = index
    note = f"manycore: raised by item #{index} of the map"
    # An exception type that refuses attributes keeps its message only.
    with contextlib.suppress(Exception):
        if hasattr(error, "add_note"):  # 3.11+
            error.add_note(note)
        else:  # 3.10: the attribute that 3.11 shows; readable by code that looks for it
            error.__notes__ = [*getattr(error, "__notes__", ()), note]  # type: ignore[attr-defined]
