"""What a worker runs for a journaled map (``journal=``): the user's function, wrapped so the parent can tell
a result from a failure, and a marker for items the journal already holds.

The map runs with ``on_error="return"``, where a failed item comes back as its exception; a result that is
itself an exception object comes back wrapped in ``Returned``, so the two never mix. An item the journal holds
travels as ``SKIP`` (a few bytes instead of the item) and comes back as ``SKIP``, so results keep their input
order and the parent fills that slot from the journal.

``functools.partial(recorded, fn)`` rather than a class with ``__call__``: a million cheap items cost 112 ns
each through it against 240 ns through a class (and wrapping every result in a tuple, the other way to tell
results from failures, tripled the pickling: 190 ns an item against 12). Names are bound as defaults because
locals are faster to read than globals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class _Skip:
    """The marker for an item already in the journal: one object per process, whatever pickling does."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "SKIP"  # by name: unpickled as this module's SKIP, so ``is`` works on both sides

    def __repr__(self) -> str:
        return "manycore.SKIP"


SKIP = _Skip()


class Returned:
    """A result that is an exception object (returned, not raised)."""

    __slots__ = ("value",)

    def __init__(self, value: BaseException) -> None:
        self.value = value

    def __reduce__(self) -> tuple[type[Returned], tuple[BaseException]]:
        return (Returned, (self.value,))


def recorded(
    fn: Callable[[Any], Any],
    item: Any,
    _skip: Any = SKIP,
    _isinstance: Callable[[Any, Any], bool] = isinstance,
    _exception: type[BaseException] = BaseException,
    _returned: type[Returned] = Returned,
) -> Any:
    """``fn(item)``, or ``SKIP`` for an item the journal holds."""
    if item is _skip:
        return _skip
    result = fn(item)
    return _returned(result) if _isinstance(result, _exception) else result


def recorded_star(
    fn: Callable[..., Any],
    *args: Any,
    _skip: Any = SKIP,
    _isinstance: Callable[[Any, Any], bool] = isinstance,
    _exception: type[BaseException] = BaseException,
    _returned: type[Returned] = Returned,
) -> Any:
    """``fn(*args)``, or ``SKIP`` for an item the journal holds (sent as ``(SKIP,)``)."""
    if len(args) == 1 and args[0] is _skip:
        return _skip
    result = fn(*args)
    return _returned(result) if _isinstance(result, _exception) else result
