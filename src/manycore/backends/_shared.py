"""Helpers the engines share: running the pool's initializer in an engine's worker, and finding broadcast
handles inside a chunk's items."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._wire import pack_exception
from ..errors import InitializerError


def substitute(
    obj: Any, convert: Callable[[Any], Any], match: type | tuple[type, ...], depth: int = 3
) -> Any:
    if isinstance(obj, match):
        return convert(obj)
    if depth and type(obj) in (tuple, list):
        return type(obj)(substitute(x, convert, match, depth - 1) for x in obj)
    return obj


def initialize(
    initializer: Callable[..., object] | None, initargs: tuple[Any, ...], where: str
) -> InitializerError | None:
    """Run the pool's initializer in an engine's worker; its failure, to report for every task sent there."""
    if initializer is None:
        return None
    try:
        initializer(*initargs)
    except Exception as exc:
        error = InitializerError(f"the pool's initializer raised in {where} ({type(exc).__name__}: {exc})")
        error.__cause__ = exc
        return error
    return None


def failed_chunk(error: BaseException, first: int, n: int) -> tuple[list[Any], dict[int, bytes], float]:
    """``run_chunk``'s answer for a chunk whose worker could not be initialized: the error for every item."""
    packed = pack_exception(error, first)
    return [None] * n, dict.fromkeys(range(n), packed), 0.0
