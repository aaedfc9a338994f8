"""Where chunks run: a registry of backends, each behind one interface (``Backend``) with declared capabilities.

``Pool(backend=...)`` takes a name (``"process"``, the default: manycore's own worker processes; ``"thread"``;
``"dask"``; ``"ray"``) or a backend object, which names a specific client or cluster::

    import distributed, manycore
    client = distributed.Client("tcp://scheduler:8786")
    with manycore.Pool(backend=manycore.backends.Dask(client=client)) as pool:
        results = pool.map(simulate, params)

Each backend lives in its own module (``process``, ``thread``, ``dask``, ``ray``), imported only when used:
``import manycore`` never imports dask or ray, nor the process scheduler. Each declares its ``Capabilities``
(``task_timeout``, ``initializer``, ``max_tasks_per_worker``, ...); a pool refuses, when it is built, an option
its backend cannot honour, with a ``ValueError`` naming the option and the backend::

    >>> import manycore
    >>> manycore.backends.capabilities("thread").task_timeout
    False
"""

from __future__ import annotations

import importlib

from ._base import Backend, Capabilities

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .._engine import Engine as Engine
    from .._jobs import SchedulerBase
    from .._options import PoolOptions
    from .dask import Dask as Dask
    from .process import Process as Process
    from .ray import Ray as Ray
    from .thread import Thread as Thread

__all__ = [
    "Backend",
    "Capabilities",
    "Dask",
    "Engine",
    "Process",
    "Ray",
    "Thread",
    "backend_class",
    "capabilities",
    "register",
    "resolve",
]

#: Backend names -> "module:Class" (relative to this package, or absolute), imported on first use.
_REGISTRY: dict[str, str | type[Backend]] = {
    "process": ".process:Process",
    "thread": ".thread:Thread",
    "dask": ".dask:Dask",
    "ray": ".ray:Ray",
}
_CLASSES = {"Process": "process", "Thread": "thread", "Dask": "dask", "Ray": "ray"}


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from .._engine import Engine

        return Engine
    if name in _CLASSES:
        return getattr(importlib.import_module("." + _CLASSES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(name: str, backend: str | type[Backend]) -> None:
    """Make ``Pool(backend=name)`` use ``backend``: a ``Backend`` subclass, or ``"package.module:Class"``
    (imported at the first pool that names it)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a backend's name must be a non-empty str, not {name!r}")
    if not isinstance(backend, str) and not (isinstance(backend, type) and issubclass(backend, Backend)):
        raise TypeError(f"register a Backend subclass or a 'module:Class' string, not {backend!r}")
    _REGISTRY[name] = backend


def backend_class(name: object) -> type[Backend]:
    """The class registered under ``name``; a ValueError listing the names for anything else."""
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        names = ", ".join(f'"{known}"' for known in _REGISTRY)
        raise ValueError(f"backend must be one of {names} or a manycore.backends object, not {name!r}")
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        loaded = getattr(importlib.import_module(module, __name__), attribute)
        if not (isinstance(loaded, type) and issubclass(loaded, Backend)):
            raise TypeError(
                f"backend {name!r} is registered as {entry}, which is not a manycore Backend class"
            )
        entry = _REGISTRY[name] = loaded  # type: ignore[index]
    return entry


def capabilities(backend: object) -> Capabilities:
    """What a backend (a name or a backend object) can do: see ``Capabilities``."""
    if isinstance(backend, Backend):
        return backend.capabilities
    return backend_class(backend).capabilities


def resolve(options: PoolOptions) -> Backend:
    """The backend a pool's options name, once every option it cannot honour has been refused."""
    given = options.backend
    if isinstance(given, Backend):
        backend = given
        given.capabilities.check(options, given.name)
        if options.initializer is not None and not given.pool_initializer:
            # Capable, but built already: the initializer would be silently dropped.
            kind = type(given).__name__
            raise ValueError(
                f"with a manycore.backends.{kind} object, pass the initializer to it: {kind}(initializer=...)"
            )
        return backend
    cls = backend_class(given)
    cls.capabilities.check(options, cls.name)
    return cls.from_options(options)


def build_scheduler(backend: Backend, options: PoolOptions, meanwhile: Callable[[], None]) -> SchedulerBase:
    """The pool's scheduler, with ``meanwhile()`` (the public face's own imports) run while what the backend
    prelaunches boots: a fork server takes ~15 ms to start, and so do the imports (W6)."""
    prelaunched = backend.prelaunch(options) if _prelaunches(type(backend)) else None
    try:
        meanwhile()
        from .._jobs import flush_std_streams

        flush_std_streams()  # what the program printed must not be printed again by a forked worker
        if prelaunched is None:  # a registered backend's scheduler() may take the options alone
            return backend.scheduler(options)
        return backend.scheduler(options, prelaunched)
    except BaseException:
        if prelaunched is not None:
            prelaunched.close()  # harmless when the scheduler has closed it already
        raise


def _prelaunches(cls: type[Backend]) -> bool:
    """Whether ``cls.scheduler`` takes what ``cls.prelaunch`` returns: not when a subclass overrides
    ``scheduler(options)`` alone, the signature from before ``prelaunch`` (it would get an argument it does not
    take)."""
    defines = [next(k for k in cls.__mro__ if name in vars(k)) for name in ("scheduler", "prelaunch")]
    return issubclass(defines[1], defines[0])
