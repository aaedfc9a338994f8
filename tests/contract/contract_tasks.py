"""Tasks for the contract suite (importable by every engine's workers)."""

from __future__ import annotations

import time


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x


def nap(x: float) -> float:
    time.sleep(x)
    return x


def pick(args: tuple[list[int], int]) -> int:
    table, i = args
    return table[i]


def exit_on_three(x: int) -> int:
    import os

    if x == 3:
        os._exit(7)  # the worker process dies, as in a crash
    return x


_state: tuple[str, int] | None = None


def set_state(value: str) -> None:
    import os

    global _state
    _state = (value, os.getpid())


def read_state(_: object) -> str | None:
    """The initializer's value if it ran in this very process (a forked copy of the parent's does not count)."""
    import os

    return _state[0] if _state is not None and _state[1] == os.getpid() else None


def explode() -> None:
    raise RuntimeError("initializer exploded")


def pid(_: object) -> int:
    import os

    return os.getpid()


def exit_once_on_three(args: tuple[int, str]) -> int:
    """Item 3 kills its worker the first time it runs (a marker file remembers), and succeeds when retried."""
    import os

    x, marker = args
    if x == 3 and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(7)
    return x * x
