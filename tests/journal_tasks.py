"""Tasks for the journal tests: each call appends its item to the file named by ``MANYCORE_TEST_CALLS``, so a
test can tell which items ran in which run (one ``write`` per line, with ``O_APPEND``: lines never mix)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

CALLS = "MANYCORE_TEST_CALLS"


def _record(x: object) -> None:
    fd = os.open(os.environ[CALLS], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)


def logged_square(x: int) -> int:
    _record(x)
    time.sleep(float(os.environ.get("MANYCORE_TEST_SLEEP", "0")))
    return x * x


def logged_fail_on_7(x: int) -> int:
    _record(x)
    if x % 10 == 7:
        raise ValueError(f"item {x} is bad")
    return x * x


def logged_add(a: int, b: int) -> int:
    _record(a)
    return a + b


def returns_exception(x: int) -> object:
    return KeyError(x) if x == 2 else x


def calls(path: str) -> list[int]:
    """Items logged in ``path`` (a line cut short by SIGKILL is dropped)."""
    try:
        with open(path, encoding="ascii") as log:
            return [int(line) for line in log.read().split("\n") if line.strip().lstrip("-").isdigit()]
    except FileNotFoundError:
        return []


def scaled(k: int):  # type: ignore[no-untyped-def]
    """A decorator with a parameter: functools.wraps hides it behind the function it wraps."""
    import functools

    def decorate(f):  # type: ignore[no-untyped-def]
        @functools.wraps(f)
        def wrapper(x):  # type: ignore[no-untyped-def]
            return k * f(x)

        return wrapper

    return decorate


def base(x: int) -> int:
    return x + 1


def describe(*args: object) -> str:
    return f"{len(args)} argument(s): {args!r}"


def exit_on_3(x: int) -> int:
    if x == 3:
        os._exit(1)
    return x


def committed(db: Path) -> set[int]:
    """The positions a journal holds a result or a failure for, read from the file as a resumed run reads it."""
    if not db.exists():
        return set()
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn, conn:
        return {
            i for start, stop in conn.execute("SELECT start, stop FROM ranges") for i in range(start, stop)
        }
