"""BLAS thread limits in workers forked from the user's process, where the BLAS already runs.

Workers of the fork server and spawned ones need none of this: their interpreter started with the limits in its
environment, so any BLAS it loads obeys them.
"""

from __future__ import annotations

import os
import sys

from .. import _platform

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    from typing import Any


class _LoadedBlas:
    """threadpoolctl's controller of the BLAS libraries loaded in the user's process, for workers forked from it.

    Such a worker inherits a BLAS that already runs, with one thread per core: only threadpoolctl can limit it
    there. Importing threadpoolctl and scanning the libraries in each worker wrote to 2.5 MiB of the pages the
    worker shared with the parent (measured with fork, W8's shape), all of it copied; ``prepare()`` runs the
    scan in the parent instead, before each fork (0.3 ms once threadpoolctl is imported), and the worker uses
    the controller it inherits. Workers of the fork server and spawned ones have none: their interpreter
    started with the limits in its environment, so any BLAS it loads obeys them (the scan cost them 0.7 MiB).
    """

    def __init__(self) -> None:
        self.controller: Any = None

    def prepare(self) -> None:
        if "numpy" not in sys.modules:
            return
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return
        self.controller = ThreadpoolController()


loaded_blas = _LoadedBlas()


def limit_loaded_blas(env: dict[str, str]) -> None:
    """Environment variables only reach BLAS libraries loaded later; a forked worker may have them already."""
    limit = env.get("OMP_NUM_THREADS")
    controller = loaded_blas.controller
    if limit is None or controller is None:
        return
    before = thread_ids()
    controller.limit(limits=int(limit))
    if int(limit) == 1:
        _quiet_restarted_blas_threads(controller.info(), thread_ids() - before)


def thread_ids(pid: int | str = "self") -> set[int]:
    """The ids of a process's threads (Linux /proc); empty where the process is gone or there is no /proc."""
    if not _platform.has("proc"):
        return set()
    try:
        return {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return set()


def _quiet_restarted_blas_threads(libraries: list[dict[str, Any]], new_threads: set[int]) -> None:
    """Quiet the thread pool that setting OpenBLAS's thread count starts again in a forked worker.

    OpenBLAS stops its threads before a fork (its atfork handler) and restarts all of them on the next call
    that needs them, and setting the thread count is one (seen with OpenBLAS 0.3.29 to 0.3.34). In a worker
    forked from a parent with numpy loaded, the limit above thus started threads that spin for about 0.1 s
    before they sleep, on the worker's own core: the first tasks after a fork ran at half speed (W8 with
    fork: 58 ms, 30 ms without). With one thread, OpenBLAS runs every call in the caller's thread and never
    uses the pool: it is stopped again where OpenBLAS exports its pre-fork shutdown, and otherwise its threads
    are left to run only on a core nothing else wants (SCHED_IDLE).
    """
    import ctypes

    for library in libraries:
        if library.get("internal_api") != "openblas":
            continue
        try:
            dynlib = ctypes.CDLL(library["filepath"], mode=os.RTLD_NOLOAD)
            shutdown = dynlib.blas_thread_shutdown_
        except (OSError, AttributeError, KeyError):  # not loaded, or a build that does not export it
            continue
        shutdown()
    if not _platform.has("sched"):
        return  # shut down above where OpenBLAS allows; the threads it runs again are left as they are
    for tid in new_threads & thread_ids():
        try:  # noqa: SIM105 (no contextlib: workers import as little as they can)
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError):  # gone meanwhile, or not Linux
            pass
