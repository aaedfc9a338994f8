"""manycore: use every core of a machine from ordinary Python code, without the traps of multiprocessing.

General layout (data flows one way, top to bottom):

- public API: ``_pool.Pool`` (multiprocessing.Pool's interface), ``_executor.Executor`` (a
  concurrent.futures.Executor), ``_api.map``/``_api.imap`` (one call, no pool to manage);
  ``_results`` and ``_imap`` hold the objects they return; ``_options`` the options they take, validated;
  ``_resume`` runs a map with ``journal=`` over the pool's imap, ``_journal`` is its SQLite file;
- backends: ``backends`` (a registry: ``process``, ``thread``, ``dask``, ``ray``, each with its capabilities);
- scheduler: ``_process`` (manycore's worker processes: assignment, the supervisor thread, one module per
  responsibility), ``_recovery`` (what becomes of a lost chunk), ``_chunking`` (automatic chunk sizes);
- transport and processes: ``_protocol`` (the wire format both sides share), ``_channel`` (framed socket
  messages), ``_launch`` and ``_zygote`` (starting workers), ``_serialize`` (parent-side cloudpickle, with
  errors that name the culprit), ``_wire`` (worker-side pickling);
- worker: the ``_worker`` package (the loop that runs chunks; it imports nothing of the parent side).

``errors`` is public (``manycore.errors``); every other module is private. Names are imported on first use
(PEP 562), so that worker processes, which import only ``manycore._worker`` and the shared transport, start
without the API layer.
"""

from __future__ import annotations

import importlib

from ._version import __version__ as __version__

# Not typing.TYPE_CHECKING: importing typing costs worker start-up ~30 ms; mypy honours any name TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from . import backends as backends
    from . import errors as errors
    from ._api import imap as imap
    from ._api import map as map
    from ._executor import Executor as Executor
    from ._imap import IMapIterator as IMapIterator
    from ._journal import read_status as journal_status
    from ._pool import Pool as Pool
    from ._results import AsyncResult as AsyncResult
    from ._shm import shared_array as shared_array
    from .errors import ManycoreError as ManycoreError
    from .errors import SerializationError as SerializationError
    from .errors import TaskTimeoutError as TaskTimeoutError
    from .errors import WorkerLostError as WorkerLostError

__all__ = (
    "AsyncResult",
    "Executor",
    "IMapIterator",
    "ManycoreError",
    "Pool",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerLostError",
    "__version__",
    "backends",
    "errors",
    "imap",
    "journal_status",
    "map",
    "shared_array",
)

_WHERE = {
    "AsyncResult": "._results",
    "Executor": "._executor",
    "IMapIterator": "._imap",
    "ManycoreError": ".errors",
    "Pool": "._pool",
    "SerializationError": ".errors",
    "TaskTimeoutError": ".errors",
    "WorkerLostError": ".errors",
    "backends": ".backends",
    "errors": ".errors",
    "imap": "._api",
    "journal_status": "._journal",
    "map": "._api",
    "shared_array": "._shm",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'manycore' has no attribute {name!r}")
    module = importlib.import_module(where, __name__)
    attribute = "read_status" if name == "journal_status" else name
    value = module if name in ("backends", "errors") else getattr(module, attribute)
    if name in ("AsyncResult", "Executor", "IMapIterator", "Pool", "imap", "map"):
        value.__module__ = "manycore"
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
