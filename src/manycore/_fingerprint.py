"""Fingerprints for journals (``journal=``): which function wrote one, and which items it holds.

Both must be equal across runs for equal things, and differ where results could differ:

- A function's fingerprint covers its bytecode, constants, names, defaults and closure (nested and wrapping
  functions included: a ``functools.wraps`` decorator's own code and closure count), a bound method's instance,
  a callable object's ``__call__`` and state, a ``functools.partial``'s arguments. Not its line numbers
  (editing a comment above it changes nothing), not the functions it calls by name, not module globals. Sets
  are encoded sorted (a set's order follows ``PYTHONHASHSEED``, random by default), and objects that do not
  pickle by their class and state, never by ``repr`` (which shows memory addresses).
- Items are fingerprinted through the standard pickle without its memo (equal items give equal bytes whatever
  objects they share), one C call per stretch of items: a million cost 30 ns each. An item that pickle cannot
  write (an instance of a class defined in a function, a recursive list) cannot be compared across runs, and
  is refused with an error naming it: a ``repr`` in its place let a changed numpy array (whose ``repr``
  elides the middle) pass for the old one.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import types
from collections.abc import Callable, Sequence
from typing import Any

from .errors import JournalError

_MAX_DEPTH = 40


def function_identity(fn: Callable[..., Any]) -> tuple[str, str]:
    """``(module.qualname, digest)`` of the function a journal is written by."""
    h = _Hash()
    name = _feed_callable(fn, h, 0)
    return name, h.hexdigest()


class _Hash:
    """A blake2b, and the callables already fed on this path (a recursive local function is in its own
    closure)."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)
        self.seen: set[int] = set()

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _name(fn: Any) -> str:
    target = getattr(fn, "__func__", fn)
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{getattr(target, '__module__', None) or type(target).__module__}.{qualname}"


def _feed_callable(fn: Any, h: _Hash, depth: int) -> str:
    if depth > _MAX_DEPTH:
        raise JournalError(f"{_name(fn)} nests too deeply to be fingerprinted for a journal")
    if id(fn) in h.seen:
        h.update(b"again " + _name(fn).encode())
        return _name(fn)
    h.seen.add(id(fn))
    if isinstance(fn, functools.partial):
        h.update(b"partial")
        _feed_value((fn.args, fn.keywords), h, depth + 1)
        return "partial(" + _feed_callable(fn.func, h, depth + 1) + ")"
    target = getattr(fn, "__func__", fn)  # a bound method: its function, then its instance
    code = getattr(target, "__code__", None)
    wrapped = getattr(fn, "__wrapped__", None)
    if isinstance(code, types.CodeType):
        _feed_function(target, h, depth)
        if target is not fn:
            h.update(b"self")
            _feed_value(getattr(fn, "__self__", None), h, depth + 1)
    elif wrapped is None and not isinstance(fn, type | types.BuiltinFunctionType):
        # A callable object: its class's __call__ and its state.
        call = next((vars(k)["__call__"] for k in type(fn).__mro__ if "__call__" in vars(k)), None)
        if isinstance(getattr(call, "__code__", None), types.CodeType):
            _feed_function(call, h, depth)
        h.update(type(fn).__qualname__.encode())
        _feed_value(getattr(fn, "__dict__", None), h, depth + 1)
    else:
        h.update(_name(fn).encode())  # a builtin or a class: by name
    if wrapped is not None and wrapped is not fn:  # a decorator: what it wraps counts too
        h.update(type(fn).__qualname__.encode())
        return _feed_callable(wrapped, h, depth + 1)
    return _name(fn)


def _feed_function(fn: Any, h: _Hash, depth: int) -> None:
    _feed_code(fn.__code__, h)
    _feed_value(getattr(fn, "__defaults__", None), h, depth + 1)
    _feed_value(getattr(fn, "__kwdefaults__", None), h, depth + 1)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = None
        _feed_value(value, h, depth + 1)


def _feed_code(code: types.CodeType, h: Any) -> None:
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_argcount, code.co_kwonlyargcount)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(const, h)
        else:
            h.update(_const_repr(const).encode())


def _const_repr(const: object) -> str:
    if isinstance(
        const, frozenset
    ):  # `x in {"a", "b"}` compiles to one; its repr order follows the hash seed
        return "frozenset(" + ",".join(sorted(map(_const_repr, const))) + ")"
    if isinstance(const, tuple):
        return "(" + ",".join(map(_const_repr, const)) + ")"
    return repr(const)


def _feed_value(value: object, h: _Hash, depth: int) -> None:
    """A default, a closure value or an argument, encoded the same way in every run."""
    if depth > _MAX_DEPTH:
        raise JournalError(
            "a function's closure or arguments nest too deeply to be fingerprinted for a journal"
        )
    if isinstance(value, set | frozenset):
        parts = []
        for item in value:
            inner = _Hash()
            inner.seen = h.seen
            _feed_value(item, inner, depth + 1)
            parts.append(inner.digest())
        h.update(b"set" + b"".join(sorted(parts)))
    elif isinstance(value, list | tuple):
        h.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _feed_value(item, h, depth + 1)
    elif isinstance(value, dict):
        h.update(f"dict{len(value)}".encode())
        for key, item in value.items():
            _feed_value(key, h, depth + 1)
            _feed_value(item, h, depth + 1)
    elif callable(value) and not isinstance(value, type):
        h.update(b"callable")
        _feed_callable(value, h, depth + 1)
    else:
        try:
            h.update(items_bytes(value))
        except Exception:  # a lock, a local class's instance: its class and state, never its repr
            h.update(type(value).__qualname__.encode())
            state = getattr(value, "__dict__", None)
            if state is not None:
                _feed_value(state, h, depth + 1)


def items_bytes(obj: object) -> bytes:
    """``obj`` pickled without the memo, so that equal items give equal bytes whatever objects they share (a
    string read twice from a file is two objects, pickled once and then by reference with the memo)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=4)
    pickler.fast = True  # no memo: each object written in full (a recursive object raises)
    pickler.dump(obj)
    return buffer.getvalue()


def items_digest(items: Sequence[Any], start: int) -> bytes:
    """The fingerprint of the items at positions ``start``...; an item pickle cannot write is refused."""
    try:
        data = items_bytes(list(items))
    except Exception:
        for offset, item in enumerate(items):
            try:
                items_bytes(item)
            except Exception as exc:
                raise JournalError(
                    f"item #{start + offset} of the input ({type(item).__qualname__}) cannot be written by the"
                    f" standard pickle ({type(exc).__name__}: {exc}), so a journal cannot tell it from another"
                    " in a later run: make its class importable (defined at a module's top level), or run"
                    " without journal="
                ) from None
        raise
    return hashlib.blake2b(data, digest_size=16).digest()
