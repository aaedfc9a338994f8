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
        # joblib passes its memmapping options (max_nbytes, mmap_mode, temp_folder) to every backend; manycore
        # moves large arrays through shared memory by itself, so only Pool's own options are kept.
        known = set(inspect.signature(Pool).parameters) - {"processes"}
        self._pool = Pool(n_jobs, **{k: v for k, v in pool_options.items() if k in known})
        return int(n_jobs)


def register() -> None:
    """Make ``backend="manycore"`` available to ``joblib.parallel_config`` and ``parallel_backend``."""
    joblib.register_parallel_backend("manycore", ManycoreBackend)


register()
