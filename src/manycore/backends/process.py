"""The ``process`` backend (the default): manycore's own worker processes, run by ``_process.Scheduler``.

The scheduler (the supervisor thread, epoll, the fork server) is imported when the first pool is built, not
when this module is: ``backends.capabilities("process")`` and the option checks cost no more than this file.
"""

from __future__ import annotations

from .._launch import default_start_method
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

    def scheduler(self, options: PoolOptions) -> Scheduler:
        from .._process._supervisor import Scheduler

        n = options.processes or cpu_count()
        return Scheduler(
            n,
            initializer=options.initializer,
            initargs=options.initargs,
            max_tasks_per_worker=options.max_tasks_per_worker,
            max_memory_per_worker=options.max_memory_per_worker,
            start_method=options.start_method or default_start_method(),
            zero_copy_threshold=options.zero_copy_threshold,
            worker_env={
                **blas_env(options.blas_threads, n),
                CPU_SHARE_VARIABLE: str(max(1, cpu_count() // n)),
            },
            # A method the user chose is kept; the default may give way to fork for initargs only a forked
            # worker can inherit (see _initdata).
            start_method_chosen=options.start_method is not None,
        )
