"""What a new worker receives first: its multiprocessing identity, and the pool's initializer with its initargs.

Drop-in means ``Pool(initializer=init, initargs=(lock,))`` with multiprocessing's own objects (Lock, Queue,
Event, Value, Array, Manager proxies, SharedMemory...) works as with ``multiprocessing.Pool``:

- ``start_method="fork"``: workers inherit initargs from the parent's memory, unpickled
  (``_mpstate.inherited_init``), so even objects that can only be inherited work. The initializer travels
  as tasks do (a ``__main__`` one then shares their globals), or is inherited when it does not pickle.
- ``forkserver`` and ``spawn``: initargs are pickled as multiprocessing pickles a new process's data, inside
  a "spawning" context (``assert_spawning`` passes; proxies carry their authkey). An object that needs a
  descriptor in the child (a Queue's pipe, a sharedctypes arena) asks ``duplicate_for_child``; those
  descriptors travel with the init frame (SCM_RIGHTS) and the worker rebuilds the object from them
  (``_mpstate.InitFd``).
- A fork-context semaphore (``multiprocessing.Lock()`` on Linux before Python 3.14) is unlinked as soon as
  it is made: only a forked process can use it. When the user did not choose the start method, such a pool
  uses fork (``pack``'s caller); when they chose forkserver or spawn, a SerializationError says what to do.

Every worker also gets the header of ``header``: the parent's authkey (Manager proxies unpickled in a worker
connect with it), the name and identity multiprocessing's pool workers have (``ForkServerPoolWorker-3``,
``(3,)``), the parent's name and pid (``parent_process()``) and the parent's resource tracker.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from multiprocessing import context, process
from typing import Any, ClassVar

from . import _mpstate, _platform
from ._serialize import dumps_function
from ._wire import PROTOCOL, dumps
from .errors import SerializationError

_KIND = {"fork": "ForkPoolWorker", "forkserver": "ForkServerPoolWorker", "spawn": "SpawnPoolWorker"}
MAX_INIT_FDS = 12  # one recvmsg takes 16 (_channel.MAX_FDS); the resource tracker's may come too


class InheritOnly(SerializationError):
    """initargs hold an object that only a forked process can use (a fork-context Lock, Queue, Value...)."""


class _Spawning:
    """The "popen" object multiprocessing's reducers consult while pickling initargs for a new worker."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(os.dup(fd))  # ours for the pool's life: every restarted worker needs it again
        return len(self.fds) - 1

    # multiprocessing.reduction.DupFd calls popen.DupFd(popen.duplicate_for_child(fd)).
    DupFd = _mpstate.InitFd


@functools.cache
def _pickler_class() -> Any:
    from collections import ChainMap
    from multiprocessing.reduction import ForkingPickler

    from ._serialize import _pickler

    base = (
        _pickler()
    )  # cloudpickle's, as tasks are pickled (a __main__ initializer shares the tasks' globals)

    class Pickler(base):  # type: ignore[misc,valid-type]
        # multiprocessing's reducers (sharedctypes, arenas, connections, sockets) as in ForkingPickler.
        extra = ForkingPickler._extra_reducers  # type: ignore[attr-defined]
        dispatch_table: ClassVar[Any] = ChainMap(extra, base.dispatch_table)

        def reducer_override(self, obj: object) -> Any:
            # A SemLock without a name was unlinked at birth (fork context): another process cannot open it.
            # Python 3.11+ refuses to pickle it; 3.10 would pickle a pointer valid only in this process.
            semlock = getattr(sys.modules.get("multiprocessing.synchronize"), "SemLock", None)
            if semlock is not None and isinstance(obj, semlock) and obj._semlock.name is None:
                raise InheritOnly(
                    f"{type(obj).__name__} object created in a fork context can only be inherited",
                    what="initargs",
                    type_name=type(obj).__qualname__,
                )
            return super().reducer_override(obj)

    return Pickler


def pack(
    initializer: Callable[..., object] | None,
    initargs: Sequence[Any],
    rest: tuple[Any, ...],
    start_method: str,
) -> tuple[bytes, list[int]]:
    """The init blob and the descriptors that must travel with it (the caller closes them at shutdown)."""
    if start_method != "fork" and initializer is None and not initargs:
        # Nothing here needs cloudpickle: its import (the parent's largest) waits for the first task, and
        # overlaps with the workers' start instead of delaying it (W6).
        return dumps((None, (), *rest)), []
    if start_method == "fork" or (initializer is None and not initargs):
        return _pack_as_tasks(initializer, rest, start_method), []
    import io

    spawning = _Spawning()
    out = io.BytesIO()
    context.set_spawning_popen(spawning)  # type: ignore[arg-type]
    try:
        _pickler_class()(out, protocol=PROTOCOL).dump((initializer, tuple(initargs), *rest))
    except Exception as exc:
        for fd in spawning.fds:
            os.close(fd)
        if isinstance(exc, InheritOnly):
            raise InheritOnly(
                f"initargs hold a {exc.type_name} made with multiprocessing's fork context (e.g. "
                f"multiprocessing.{exc.type_name}() on Linux before Python 3.14), which only a forked process "
                f"can use, but this pool starts workers with {start_method!r}. Make it with "
                f"multiprocessing.get_context({start_method!r}).{exc.type_name}(), or use start_method='fork'.",
                what="initargs",
                type_name=exc.type_name,
            ) from None
        raise SerializationError(
            f"the initializer or its initargs cannot be pickled to send them to workers started with "
            f"{start_method!r} ({type(exc).__name__}: {exc})",
            what="initargs",
            detail=str(exc),
        ) from exc
    finally:
        context.set_spawning_popen(None)
    if spawning.fds and not _platform.has("fd_passing"):
        for fd in spawning.fds:
            os.close(fd)
        raise SerializationError(
            f"initargs hold {len(spawning.fds)} object(s) that need a file descriptor in each worker (a "
            f"multiprocessing Queue, Pipe, Value or Array), and {_platform.lacks('fd_passing')}: pass a "
            "multiprocessing.Manager() proxy instead (manager.Queue(), manager.Lock(), manager.Value()), which "
            "workers reach by connecting to the manager",
            what="initargs",
        )
    if len(spawning.fds) > MAX_INIT_FDS:
        for fd in spawning.fds:
            os.close(fd)
        raise SerializationError(
            f"initargs hold {len(spawning.fds)} objects that need a file descriptor in each worker (Queues, "
            f"Pipes, sharedctypes); at most {MAX_INIT_FDS} are supported: share fewer, or use start_method='fork'",
            what="initargs",
        )
    return out.getvalue(), spawning.fds


def _pack_as_tasks(
    initializer: Callable[..., object] | None, rest: tuple[Any, ...], start_method: str
) -> bytes:
    """The forked worker inherits initargs. The initializer travels as tasks do when it can, so that one defined
    in __main__ sets the globals the tasks see (_wire.MAIN_GLOBALS), and is inherited when it cannot (e.g. a
    partial holding a fork-context Lock)."""
    if start_method == "fork":
        # cloudpickle is imported now, before any fork: a fork while another thread imports it would leave the
        # worker a module lock that no thread will release.
        from ._serialize import _pickler

        _pickler()
    try:
        return dumps_function((initializer, (), *rest))
    except SerializationError:
        if start_method != "fork":
            raise
        return dumps_function((None, (), *rest))


def tracker_fd() -> int | None:
    """The parent's resource tracker, when it runs (the program made a SharedMemory or a named semaphore).

    Never started here: multiprocessing starts one for every spawned process, but an extra process per program
    for pools that share no such object is not worth it. A SharedMemory made after the pool started and sent
    as an argument is thus tracked by the worker's own tracker, as before.
    """
    module = sys.modules.get("multiprocessing.resource_tracker")
    fd = getattr(getattr(module, "_resource_tracker", None), "_fd", None)
    return fd if isinstance(fd, int) else None


def header(start_method: str, nfds: int, tracker: int | None) -> bytes:
    """A new worker's multiprocessing identity, as multiprocessing names its own pool workers."""
    me = process.current_process()
    identity = (*me._identity, next(process._process_counter))  # type: ignore[attr-defined]
    name = f"{_KIND[start_method]}-{':'.join(map(str, identity))}"
    fds = nfds if tracker is None else nfds + 1
    return dumps(
        (bytes(me.authkey), name, identity, me.name, os.getpid(), None if tracker is None else nfds, fds)
    )
