"""Every user-facing option, validated in one place, with errors that name the parameter the user passed.

Two immutable values carry them through the layers (never dicts or ``**options``):

- ``PoolOptions``: what a ``Pool`` or ``Executor`` is built with, validated once, when it is built. The backend
  (``manycore.backends``) then refuses, from its declared capabilities, the options it cannot honour.
- ``CallOptions``: what one call runs with (``chunksize``, ``on_error``, ``retries``, ``task_timeout``,
  ``progress``): the pool's defaults (``PoolOptions.defaults``) merged with the call's overrides.

One default per option: ``chunksize=None`` means automatic everywhere (``"auto"`` is accepted as its other
spelling), ``processes=None`` means the backend's own count (this process's cores for processes and threads,
the cluster's slots for Dask and Ray), ``start_method=None`` means the platform's default.

This module builds nothing: no scheduler, no backend. It is a leaf of the parent side, so every layer may
import it (and ``backends`` does: options flow down, never up).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from . import _platform
from ._launch import START_METHODS, require_start_method
from ._shm import DEFAULT_THRESHOLD

OnError = Literal["raise", "return"]
Chunksize = int | Literal["auto"] | None
Progress = bool | Literal["always"]


#: Set in every worker to its share of the cores (cores // processes of its pool, at least 1), so that a pool
#: created inside a task (or by a program the task starts) defaults to that share, not to every core: N
#: workers each starting N workers would run N x N processes on N cores.
CPU_SHARE_VARIABLE = "MANYCORE_CPU_SHARE"


def cpu_count() -> int:
    """Cores this process may run on (CPU affinity and container limits respected where the OS tells).

    Inside a manycore worker: that worker's share of its pool's cores (``MANYCORE_CPU_SHARE``).
    """
    try:
        count = (len(os.sched_getaffinity(0)) if _platform.has("sched") else os.cpu_count()) or 1
    except OSError:
        count = os.cpu_count() or 1
    share = os.environ.get(CPU_SHARE_VARIABLE, "")
    if share.isdigit() and int(share) >= 1:
        count = min(count, int(share))
    return count


# ---- validators: one per option; each returns the normalized value or raises naming ``name`` -------------


def processes(value: object, name: str = "processes") -> int:
    """A worker count; None means every core this process may use (``cpu_count``)."""
    count = check_worker_count(value, name)
    return cpu_count() if count is None else count


def check_worker_count(value: object, name: str = "processes") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def check_chunksize(value: object) -> int | None:
    """None (or its other spelling, "auto") means automatic."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'chunksize must be a positive int or "auto", not {type(value).__name__} {value!r}')
    if value < 1:
        raise ValueError(f'chunksize must be a positive int or "auto", not {value}')
    return value


def check_on_error(value: object) -> OnError:
    if value not in ("raise", "return"):
        raise ValueError(f'on_error must be "raise" or "return", not {value!r}')
    return "raise" if value == "raise" else "return"


def check_retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"retries must be an int >= 0, not {value!r}")
    return value


def check_timeout(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a number of seconds > 0 or None, not {value!r}")
    return float(value)


def check_progress(value: object) -> Progress:
    if value is None or value is False:
        return False
    if value is not True and value != "always":
        raise ValueError(f'progress must be True, False or "always", not {value!r}')
    return True if value is True else "always"


def check_max_tasks(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 or None, not {value!r}")
    return value


def check_start_method(value: object, name: str = "start_method") -> str | None:
    """One of ``START_METHODS``; None leaves the choice to the platform's default."""
    if value is None:
        return None
    if value not in START_METHODS:
        raise ValueError(f"{name} must be one of {', '.join(START_METHODS)}, not {value!r}")
    require_start_method(value)
    return str(value)


def context_start_method(method: str | None, context: Any) -> str | None:
    """The start method a ``multiprocessing`` context names, where no ``start_method`` was given."""
    if method is None and context is not None:
        return str(context.get_start_method())
    return method


def check_zero_copy_threshold(value: object) -> int | None:
    """Bytes from which a buffer travels through shared memory; None keeps everything in the pickle."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"zero_copy_threshold must be a number of bytes >= 1 or None, not {value!r}")
    return value


def check_blas_threads(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"blas_threads must be an int >= 1 or None, not {value!r}")
    return value


def check_initializer(value: object) -> Callable[..., object] | None:
    if value is not None and not callable(value):
        raise TypeError("initializer must be a callable")
    return value


def check_initargs(value: object) -> tuple[Any, ...]:
    if isinstance(value, tuple):
        return value
    if not isinstance(value, Iterable) or isinstance(value, str | bytes | Mapping):
        raise TypeError(
            f"initargs must be a tuple of arguments for the initializer, not {type(value).__name__}"
        )
    return tuple(value)


BLAS_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def blas_env(value: object, workers: int) -> dict[str, str]:
    """Environment for workers limiting BLAS/OpenMP threads: by default cores / workers, at least 1.

    N workers each starting one BLAS thread per core would run N x cores threads on cores cores.
    """
    threads = check_blas_threads(value)
    if threads is None:
        threads = max(1, cpu_count() // workers)
    return dict.fromkeys(BLAS_VARIABLES, str(threads))


def function(value: object, name: str = "func") -> Callable[..., Any]:
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__} {value!r}")
    return value


# ---- the option objects --------------------------------------------------------------------------------


class _Frozen:
    """An immutable value: fields set once by ``__init__``; equality and repr from them.

    Not ``dataclasses``: importing it (and ``inspect`` with it) costs ~11 ms of every program's first ``Pool()``
    (W6, cold start), for what a dozen lines do here.
    """

    __slots__: tuple[str, ...] = ()
    _fields: tuple[str, ...] = ()

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; make a new one with replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._fields}

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, type(self)) and type(other) is type(self) and self.as_dict() == other.as_dict()
        )

    __hash__ = None  # type: ignore[assignment]  # initargs may hold unhashable objects

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.as_dict().items())
        return f"{type(self).__name__}({fields})"


#: The options a call may override (``pool.map(f, xs, retries=2)``).
CALL_OPTIONS = frozenset({"chunksize", "on_error", "retries", "task_timeout", "progress"})


class CallOptions(_Frozen):
    """What one call (a map, an imap, an apply, a submit) runs with; validated when made.

    ``chunksize``: None means automatic (chunks sized from measured item costs); ``on_error``: ``"raise"`` (the
    first failing item's exception) or ``"return"`` (failed items come back as their exceptions); ``retries``:
    how many times an item whose worker died or timed out runs again; ``task_timeout``: seconds per item, or
    None; ``progress``: a tqdm bar (True: on a terminal; ``"always"``: even when not one).
    """

    __slots__ = ("chunksize", "on_error", "progress", "retries", "task_timeout")
    _fields = ("chunksize", "on_error", "retries", "task_timeout", "progress")

    chunksize: int | None
    on_error: OnError
    retries: int
    task_timeout: float | None
    progress: Progress

    def __init__(
        self,
        *,
        chunksize: Chunksize = None,
        on_error: str = "raise",
        retries: int = 0,
        task_timeout: float | None = None,
        progress: bool | str | None = False,
    ) -> None:
        self._set(
            chunksize=check_chunksize(chunksize),
            on_error=check_on_error(on_error),
            retries=check_retries(retries),
            task_timeout=check_timeout(task_timeout, "task_timeout"),
            progress=check_progress(progress),
        )

    def merge(self, overrides: Mapping[str, Any], allowed: frozenset[str] = CALL_OPTIONS) -> CallOptions:
        """These options with a call's overrides applied, validated; an unknown name is a TypeError."""
        if not allowed.issuperset(overrides):
            unknown = set(overrides) - allowed
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        if not overrides:
            return self
        # Only the overrides are checked (this runs once per map call): the rest was checked when self was made.
        merged = object.__new__(CallOptions)
        setattr_ = object.__setattr__
        for name in self._fields:
            if name in overrides:
                setattr_(merged, name, _CALL_CHECKS[name](overrides[name]))
            else:
                setattr_(merged, name, getattr(self, name))
        return merged


_CALL_CHECKS: dict[str, Callable[[Any], Any]] = {
    "chunksize": check_chunksize,
    "on_error": check_on_error,
    "retries": check_retries,
    "task_timeout": lambda value: check_timeout(value, "task_timeout"),
    "progress": check_progress,
}
DEFAULT_CALL = CallOptions()


class PoolOptions(_Frozen):
    """What a Pool or Executor is built with; validated once, when made.

    ``processes``: worker count, None for the backend's own (cores here, the cluster's slots on Dask and Ray).
    ``backend``: a name (``"process"``, ``"thread"``, ``"dask"``, ``"ray"``) or a ``manycore.backends`` object;
    checked, with the options it supports, by ``manycore.backends.resolve``. ``start_method``: None for the
    platform's default (a ``multiprocessing`` context is turned into its method by ``context_start_method``).
    ``defaults``: the ``CallOptions`` every call starts from.

    ``names`` maps a field to the parameter the user passed it as (``Executor``'s ``max_workers`` is
    ``processes`` here), so that every error names what the user wrote.
    """

    __slots__ = (
        "_names",
        "backend",
        "blas_threads",
        "defaults",
        "initargs",
        "initializer",
        "max_memory_per_worker",
        "max_tasks_per_worker",
        "processes",
        "start_method",
        "zero_copy_threshold",
    )
    _fields = (
        "processes",
        "backend",
        "initializer",
        "initargs",
        "max_tasks_per_worker",
        "max_memory_per_worker",
        "start_method",
        "zero_copy_threshold",
        "blas_threads",
        "defaults",
    )

    processes: int | None
    backend: object
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks_per_worker: int | None
    max_memory_per_worker: int | None
    start_method: str | None
    zero_copy_threshold: int | None
    blas_threads: int | None
    defaults: CallOptions

    def __init__(
        self,
        processes: int | None = None,
        *,
        backend: object = "process",
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        start_method: str | None = None,
        zero_copy_threshold: int | None = DEFAULT_THRESHOLD,
        blas_threads: int | None = None,
        defaults: CallOptions = DEFAULT_CALL,
        names: Mapping[str, str] | None = None,
    ) -> None:
        names = dict(names or {})
        self._set(_names=names)
        if not isinstance(defaults, CallOptions):
            raise TypeError(f"defaults must be a CallOptions, not {type(defaults).__name__}")
        self._set(
            processes=check_worker_count(processes, self.name_of("processes")),
            backend="process" if backend is None else backend,
            initializer=check_initializer(initializer),
            initargs=check_initargs(initargs),
            max_tasks_per_worker=check_max_tasks(max_tasks_per_worker, self.name_of("max_tasks_per_worker")),
            max_memory_per_worker=check_max_tasks(
                max_memory_per_worker, self.name_of("max_memory_per_worker")
            ),
            start_method=check_start_method(start_method, self.name_of("start_method")),
            zero_copy_threshold=check_zero_copy_threshold(zero_copy_threshold),
            blas_threads=check_blas_threads(blas_threads),
            defaults=defaults,
        )

    def name_of(self, field: str) -> str:
        """The parameter the user passed ``field`` as (for error messages)."""
        return str(self._names.get(field, field))  # type: ignore[attr-defined]

    def given(self) -> dict[str, object]:
        """The options set to something other than their default, by field: what a backend must honour."""
        out: dict[str, object] = {}
        for field in ("initializer", "max_tasks_per_worker", "max_memory_per_worker", "start_method"):
            if getattr(self, field) is not None:
                out[field] = getattr(self, field)
        if self.defaults.task_timeout is not None:
            out["task_timeout"] = self.defaults.task_timeout
        return out

    def replace(self, **changes: Any) -> PoolOptions:
        """A copy with some fields changed (validated again)."""
        names = changes.pop("names", self._names)  # type: ignore[attr-defined]
        return PoolOptions(**{**self.as_dict(), **changes}, names=names)
