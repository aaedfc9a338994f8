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
