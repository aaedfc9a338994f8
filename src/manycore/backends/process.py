"""The ``process`` backend (the default): manycore's own worker processes, run by ``_process.Scheduler``.

The scheduler (the supervisor thread, epoll, the fork server) is imported when the first pool is built, not
when this module is: ``backends.capabilities("process")`` and the option checks cost no more than this file.
"""

from __future__ import annotations

from .._launch import Launcher, default_start_method, make_launcher
from .._options import CPU_SHARE_VARIABLE, PoolOptions, blas_env, cpu_count
from ._base import Backend, Capabilities

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._process._supervisor import Scheduler


class Process(Backend):
    """Worker processes of this machine, started by a fork server, ``fork`` or ``spawn``: every option."""

    name = "process"
    capabilities = Capabilities(
        task_timeout=True,
        initializer=True,
        max_tasks_per_worker=True,
        max_memory_per_worker=True,
        start_method=True,
        broadcast=True,
        shared_memory=True,
        lost_workers=True,
    )
    pool_initializer = True

    def prelaunch(self, options: PoolOptions) -> Launcher | None:
        # A fork server is a fresh interpreter: ~15 ms to boot, which a first Pool() spends importing the
        # scheduler (~15 ms) when it starts the server first (W6: 47 ms instead of 62 on this 2-core VM).
        if (options.start_method or default_start_method()) != "forkserver":
            return None
        return make_launcher("forkserver", _worker_env(options))

    def scheduler(self, options: PoolOptions, prelaunched: Launcher | None = None) -> Scheduler:
        from .._process._supervisor import Scheduler

        return Scheduler(
            _workers(options),
            initializer=options.initializer,
            initargs=options.initargs,
            max_tasks_per_worker=options.max_tasks_per_worker,
            max_memory_per_worker=options.max_memory_per_worker,
            start_method=options.start_method or default_start_method(),
            zero_copy_threshold=options.zero_copy_threshold,
            worker_env=_worker_env(options),
            # A method the user chose is kept; the default may give way to fork for initargs only a forked
            # worker can inherit (see _initdata).
            start_method_chosen=options.start_method is not None,
            launcher=prelaunched,
        )


def _workers(options: PoolOptions) -> int:
    return options.processes or cpu_count()


def _worker_env(options: PoolOptions) -> dict[str, str]:
    """What a pool's workers find in their environment: BLAS thread limits and their share of the cores."""
    n = _workers(options)
    return {**blas_env(options.blas_threads, n), CPU_SHARE_VARIABLE: str(max(1, cpu_count() // n))}
