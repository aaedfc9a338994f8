"""manycore: use every core of a machine from ordinary Python code, without the traps of multiprocessing.

General layout (data flows one way, top to bottom):

- public API: ``_pool.Pool`` (multiprocessing.Pool's interface), ``_executor.Executor`` (a
  concurrent.futures.Executor), ``_api.map``/``_api.imap`` (one call, no pool to manage);
  ``_results`` holds the objects they return;
- scheduler: ``_scheduler`` (assignment, the supervisor thread, crash and timeout recovery),
  ``_chunking`` (automatic chunk sizes);
- transport and processes: ``_channel`` (framed socket messages), ``_launch`` and ``_zygote`` (starting workers),
  ``_serialize`` (cloudpickle, with errors that name the culprit);
- worker: ``_worker`` (the loop that runs chunks).

``errors`` is public (``manycore.errors``); every other module is private.
"""

from . import errors as errors
from ._api import imap as imap
from ._api import map as map
from ._executor import Executor as Executor
from ._pool import Pool as Pool
from ._results import AsyncResult as AsyncResult
from ._results import IMapIterator as IMapIterator
from ._version import __version__ as __version__
from .errors import (
    ManycoreError as ManycoreError,
)
from .errors import (
    SerializationError as SerializationError,
)
from .errors import (
    TaskTimeoutError as TaskTimeoutError,
)
from .errors import (
    WorkerLostError as WorkerLostError,
)

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
    "errors",
    "imap",
    "map",
)

for _name in ("AsyncResult", "Executor", "IMapIterator", "Pool", "imap", "map"):
    globals()[_name].__module__ = "manycore"
del _name
