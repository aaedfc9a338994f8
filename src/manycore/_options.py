"""Validation of every user-facing option, in one place, with errors that name the parameter."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ._launch import START_METHODS, default_start_method

OnError = Literal["raise", "return"]
Chunksize = int | Literal["auto"] | None


#: Set in every worker to its share of the cores (cores // processes of its pool, at least 1), so that a pool
#: created inside a task (or by a program the task starts) defaults to that share, not to every core: N
#: workers each starting N workers would run N x N processes on N cores.
CPU_SHARE_VARIABLE = "MANYCORE_CPU_SHARE"


def cpu_count() -> int:
    """Cores this process may run on (CPU affinity and container limits respected where the OS tells).

    Inside a manycore worker: that worker's share of its pool's cores (``MANYCORE_CPU_SHARE``).
    """
    try:
        count = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    share = os.environ.get(CPU_SHARE_VARIABLE, "")
    if share.isdigit() and int(share) >= 1:
        count = min(count, int(share))
    return count


def processes(value: object, name: str = "processes") -> int:
    if value is None:
        return cpu_count()
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def chunksize(value: object) -> int | None:
    """None means automatic."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'chunksize must be a positive int or "auto", not {type(value).__name__} {value!r}')
    if value < 1:
        raise ValueError(f'chunksize must be a positive int or "auto", not {value}')
    return value


def on_error(value: object) -> OnError:
    if value not in ("raise", "return"):
        raise ValueError(f'on_error must be "raise" or "return", not {value!r}')
    return "raise" if value == "raise" else "return"


def retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"retries must be an int >= 0, not {value!r}")
    return value


def timeout(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a number of seconds > 0 or None, not {value!r}")
    return float(value)


def max_tasks(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 or None, not {value!r}")
    return value


def start_method(value: object, context: Any = None) -> str:
    if value is None and context is not None:
        value = context.get_start_method()
    if value is None:
        return default_start_method()
    if value not in START_METHODS:
        raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}, not {value!r}")
    return str(value)


def zero_copy_threshold(value: object) -> int | None:
    """Bytes from which a buffer travels through shared memory; None keeps everything in the pickle."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"zero_copy_threshold must be a number of bytes >= 1 or None, not {value!r}")
    return value


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
    if value is None:
        value = max(1, cpu_count() // workers)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"blas_threads must be an int >= 1 or None, not {value!r}")
    return dict.fromkeys(BLAS_VARIABLES, str(value))


def make_scheduler(
    backend: object,
    count: int | None,
    *,
    initializer: Callable[..., object] | None,
    initargs: Sequence[Any],
    task_limit: int | None,
    memory_limit: int | None,
    method: str | None,
    context: Any,
    threshold: int | None,
    blas_threads: int | None,
) -> Any:
    """The scheduler behind a Pool or Executor: manycore's processes, or an engine from ``manycore.backends``.

    (Parameter names differ from the user-facing ones so as not to shadow this module's validators.)
    """
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    if backend is None or backend == "process":
        from ._scheduler import Scheduler

        n = processes(count)
        return Scheduler(
            n,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=task_limit,
            max_memory_per_worker=max_tasks(memory_limit, "max_memory_per_worker"),
            start_method=start_method(method, context),
            zero_copy_threshold=zero_copy_threshold(threshold),
            worker_env={**blas_env(blas_threads, n), CPU_SHARE_VARIABLE: str(max(1, cpu_count() // n))},
            start_method_chosen=method is not None or context is not None,
        )
    from . import backends
    from ._engine import EngineScheduler

    if backend == "thread":
        backend = backends.Thread(processes(count), initializer, tuple(initargs))
        initializer = None
    elif backend == "ray" and initializer is not None:
        backend = backends.Ray(initializer=initializer, initargs=tuple(initargs))
        initializer = None
    engine = backends.resolve(backend, count)
    name = getattr(engine, "name", backend)
    if initializer is not None and isinstance(engine, backends.Ray):
        raise ValueError(
            "with a manycore.backends.Ray object, pass the initializer to it: Ray(initializer=...)"
        )
    refused = {
        "initializer": initializer is not None and not isinstance(engine, backends.Thread),
        "maxtasksperchild": task_limit is not None,
        "max_memory_per_worker": memory_limit is not None,
        "start_method": method is not None or context is not None,
    }
    for option, given in refused.items():
        if given:
            raise ValueError(
                f"{option} is not supported on the {name} backend; it applies to backend='process'"
            )
    return EngineScheduler(engine)  # type: ignore[arg-type]


def function(value: object, name: str = "func") -> Callable[..., Any]:
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__} {value!r}")
    return value
