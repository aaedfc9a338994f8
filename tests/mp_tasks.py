"""Tasks for tests/test_mp_objects.py. No module-level ``import multiprocessing``: the worker must get its
multiprocessing identity even when a task imports multiprocessing only when it runs."""

from __future__ import annotations

import os
from typing import Any

OBJECTS: dict[str, Any] = {}


def keep(objects: dict[str, Any]) -> None:
    """Initializer: keep multiprocessing's objects received through initargs."""
    OBJECTS.update(objects)


def use_objects(x: int) -> int:
    """Use every object as multiprocessing's docs do; returns x so that the parent can check the results."""
    o = OBJECTS
    with o["lock"]:
        o["value"].value += x
    with o["rlock"], o["rlock"]:
        o["array"][x] = x * 10
    with o["semaphore"]:
        pass
    with o["condition"]:
        o["condition"].notify_all()
    assert o["event"].is_set()
    o["queue"].put(x)
    o["simple_queue"].put(x)
    o["joinable_queue"].put(x)
    o["shm"].buf[x] = x + 1
    return x


def lock_then(x: int) -> int:
    with OBJECTS["lock"]:
        return x


def identity(_: object = None) -> tuple[str, tuple[int, ...], int | None, str | None, bytes, int]:
    import multiprocessing  # imported here, after the worker started, on purpose

    me = multiprocessing.current_process()
    parent = multiprocessing.parent_process()
    return (
        me.name,
        me._identity,  # type: ignore[attr-defined]
        None if parent is None else parent.pid,
        None if parent is None else f"{parent.name} alive={parent.is_alive()}",
        bytes(me.authkey),
        os.getpid(),
    )


def store(args: tuple[Any, int]) -> Any:
    """Write into a Manager dict proxy given as an argument; return the proxy itself as the result."""
    d, i = args
    d[i] = i * i
    return d


def store_in_initargs(i: int) -> int:
    OBJECTS["dict"][i] = -i
    OBJECTS["list"].append(i)
    return i


class BadInWorker:
    """Pickles in the parent, raises when unpickled (as a Manager proxy did with a wrong authkey)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_refuse, ())


def _refuse() -> None:
    raise OSError("this object cannot be rebuilt in a worker")


class DiesInWorker:
    """Kills the worker while it is unpickled, before it can report anything."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (os._exit, (3,))


def die_at_start(_: object = None) -> None:
    """Initializer that kills its worker before it can report anything."""
    os._exit(3)


def heavy_modules(_: object = None) -> list[str]:
    import sys

    return sorted(m for m in ("multiprocessing", "multiprocessing.process") if m in sys.modules)


def touch_shm(x: int) -> int:
    OBJECTS["shm"].buf[x] = x + 1
    return x
