"""What every backend is: a name, the options it can honour (``Capabilities``), and a way to build a scheduler.

Kept light (no scheduler, no engine imported here): ``Pool()`` imports it on every start-up.
"""

from __future__ import annotations

from typing import ClassVar

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._jobs import SchedulerBase
    from .._launch import Launcher
    from .._options import CallOptions, PoolOptions


class Capabilities:
    """What a backend can do, beyond running chunks and every job semantic (ordered map, lazy imap, automatic
    chunks, ``on_error``, ``retries``, progress, remote tracebacks), which every backend has.

    Options a backend cannot honour are refused when the pool is built (``check``), and per call
    (``check_call``), with a ``ValueError`` naming the option and the backend; the contract tests read these
    flags to know what to expect, never the backend's name.
    """

    __slots__ = (
        "broadcast",
        "initializer",
        "lost_workers",
        "max_memory_per_worker",
        "max_tasks_per_worker",
        "shared_memory",
        "start_method",
        "task_timeout",
    )

    def __init__(
        self,
        *,
        task_timeout: bool = False,
        initializer: bool = False,
        max_tasks_per_worker: bool = False,
        max_memory_per_worker: bool = False,
        start_method: bool = False,
        broadcast: bool = False,
        shared_memory: bool = False,
        lost_workers: bool = False,
    ) -> None:
        #: ``task_timeout``: a running task can be stopped (its worker killed and replaced).
        self.task_timeout = task_timeout
        #: ``initializer``/``initargs`` run once in each worker.
        self.initializer = initializer
        #: ``maxtasksperchild``/``max_tasks_per_worker``: workers are replaced after N chunks.
        self.max_tasks_per_worker = max_tasks_per_worker
        #: ``max_memory_per_worker``: a worker over the limit is replaced.
        self.max_memory_per_worker = max_memory_per_worker
        #: ``start_method``/``context``: how worker processes start.
        self.start_method = start_method
        #: ``Pool.broadcast``: an object sent to each worker once.
        self.broadcast = broadcast
        #: Large buffers travel through shared memory (``zero_copy_threshold``; ignored elsewhere).
        self.shared_memory = shared_memory
        #: A task may kill its worker (``os._exit``, a signal): the item fails alone (or is retried), the pool
        #: replaces the worker and goes on. False where tasks share the pool's process (threads).
        self.lost_workers = lost_workers

    def __repr__(self) -> str:
        supported = [name for name in self.__slots__ if getattr(self, name)]
        return f"Capabilities({', '.join(supported) or 'none'})"

    def check(self, options: PoolOptions, backend: str) -> None:
        """Refuse, naming it, the first option given that this backend cannot honour."""
        for field in options.given():
            if not getattr(self, field):
                raise ValueError(refusal(field, options.name_of(field), backend))

    def check_call(self, call: CallOptions, backend: str) -> None:
        if call.task_timeout is not None and not self.task_timeout:
            raise ValueError(refusal("task_timeout", "task_timeout", backend))


def refusal(field: str, name: str, backend: str) -> str:
    if field == "task_timeout":
        return (
            f"{name} is not supported on the {backend} backend: it cannot stop a task that is running. "
            "Use the process backend for per-task timeouts."
        )
    return f"{name} is not supported on the {backend} backend; it applies to backend='process'"


class Backend:
    """Where a pool's chunks run. Each backend declares its ``capabilities`` and builds the pool's scheduler.

    A backend given by name is made from the pool's options (``from_options``); a backend object (e.g.
    ``manycore.backends.Dask(client=...)``) is used as it is, and takes its initializer, if it runs one, in its
    own constructor.
    """

    name: ClassVar[str] = "backend"
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: Whether ``Pool(initializer=...)`` reaches a backend object passed as ``backend=``: the process backend
    #: reads it from the options; an engine takes it in its constructor, which has already run.
    pool_initializer: ClassVar[bool] = False

    @classmethod
    def from_options(cls, options: PoolOptions) -> Backend:
        """The backend a name stands for, made from the pool's options."""
        return cls()

    def prelaunch(self, options: PoolOptions) -> Launcher | None:
        """Start now what boots in another process (the process backend's fork server), or return None.

        ``Pool()`` calls it before importing the scheduler, so that the two take their time side by side; it
        then passes what this returns to ``scheduler``, which owns it from then on (the pool closes it only if
        ``scheduler`` is never reached). Backends that start nothing keep this default.
        """
        return None

    def scheduler(self, options: PoolOptions, prelaunched: Launcher | None = None) -> SchedulerBase:
        """The scheduler that runs the pool's jobs here; called once, when the pool is built, with what
        ``prelaunch`` returned (only when that was not None)."""
        raise NotImplementedError
