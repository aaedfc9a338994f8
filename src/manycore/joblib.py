"""A joblib backend named "manycore": scikit-learn's ``n_jobs`` on manycore's process pool.

>>> import joblib, manycore.joblib
>>> with joblib.parallel_config(backend="manycore", n_jobs=2):
...     joblib.Parallel()(joblib.delayed(abs)(x) for x in [-1, -2])
[1, 2]

Importing this module registers the backend (``register()`` does it again, harmlessly). Each batch that joblib
sends is one task on manycore's pool, so a worker that dies fails that batch with ``WorkerLostError`` (a
``BrokenProcessPool``) instead of breaking every pending task, and the pool is restarted only if joblib asks.
"""

from __future__ import annotations

import inspect
from typing import Any

import joblib
from joblib._parallel_backends import (
    AutoBatchingMixin,
    ParallelBackendBase,
    PoolManagerMixin,
    SequentialBackend,
)
from joblib.parallel import FallbackToBackend

from ._pool import Pool

__all__ = ["ManycoreBackend", "register"]


class ManycoreBackend(PoolManagerMixin, AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's contract (``configure``, ``submit``, ``terminate``) on a ``manycore.Pool``."""

    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: Any = None,
        require: Any = None,
        **pool_options: Any,
    ) -> int:
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._pool = Pool(n_jobs, **self._pool_options(pool_options))
        return int(n_jobs)

    def _pool_options(self, per_call: dict[str, Any]) -> dict[str, Any]:
        # Options given to parallel_config(backend="manycore", ...) reach the constructor (backend_kwargs, joblib
        # >= 1.3); options given to Parallel(...) reach configure(). Parallel's win, as in joblib's own backends.
        options = {**getattr(self, "backend_kwargs", {}), **per_call}
        # joblib adds context=multiprocessing.get_context() to every call: its default, not a choice of the user
        # (fork on Linux before 3.14, "loky" inside a loky worker). manycore picks its own start method; users
        # choose one with start_method=... .
        options.pop("context", None)
        # joblib passes its memmapping options to every backend; manycore moves large arrays through shared
        # memory by itself.
        for name in _JOBLIB_OPTIONS:
            options.pop(name, None)
        unknown = sorted(set(options) - _POOL_OPTIONS)
        if unknown:
            raise TypeError(
                f"the manycore joblib backend got unknown option(s) {', '.join(unknown)}; "
                f"it accepts manycore.Pool's options: {', '.join(sorted(_POOL_OPTIONS))}"
            )
        # Every worker imports this module (unpickling _start_worker does), so that a nested Parallel naming
        # backend="manycore" works there too: a fork-server or spawned worker starts without it.
        options["initargs"] = (options.get("initializer"), tuple(options.get("initargs", ())))
        options["initializer"] = _start_worker
        return options

    def terminate(self) -> None:
        super().terminate()
        # As joblib's own backends do: a later call on this backend must not start from this call's batch sizes.
        self.reset_batch_stats()


def _start_worker(initializer: Any, initargs: tuple[Any, ...]) -> None:
    if initializer is not None:
        initializer(*initargs)


#: What joblib itself passes to every backend's configure(), beyond the named parameters.
_JOBLIB_OPTIONS = ("max_nbytes", "mmap_mode", "temp_folder", "verbose")
_POOL_OPTIONS = frozenset(inspect.signature(Pool).parameters) - {"processes", "context"}


def register() -> None:
    """Make ``backend="manycore"`` available to ``joblib.parallel_config`` and ``parallel_backend``."""
    joblib.register_parallel_backend("manycore", ManycoreBackend)


register()
