"""The worker side: the code a worker process runs. It imports nothing of the parent side (the scheduler, jobs,
results, options, backends), only the shared protocol, framing, shared memory and pickling modules
(``tests/test_worker_imports.py``).

This file imports nothing: the fork server and spawned workers import ``manycore._worker._entry``, and what
they load is start-up time (W6). The names below are the ones modules outside this package imported from the
former ``_worker.py``; they resolve on first use (PEP 562) until those modules name the new homes.
"""

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    from .._protocol import BLOCK_SHIFT as BLOCK_SHIFT
    from .._protocol import FN_SHIFT as FN_SHIFT
    from .._protocol import FUNCTION_CACHE as FUNCTION_CACHE
    from .._protocol import INPUT_KEPT as INPUT_KEPT
    from .._protocol import NO_FUNCTION as NO_FUNCTION
    from .._protocol import OUT_OF_BAND as OUT_OF_BAND
    from .._protocol import PARTIAL as PARTIAL
    from .._protocol import STATUS as STATUS
    from .._protocol import STATUS_SIZE as STATUS_SIZE
    from .._protocol import TOKEN as TOKEN
    from .._protocol import TRACK_ITEMS as TRACK_ITEMS
    from .._protocol import UNLOADABLE as UNLOADABLE
    from ._blas import loaded_blas as loaded_blas
    from ._blas import thread_ids as thread_ids
    from ._entry import run_in_child as run_in_child
    from ._entry import set_parent_death_signal as set_parent_death_signal
    from ._entry import spawn_main as spawn_main
    from ._run import run_items as run_items
    from ._serve import serve as serve

_MOVED = {
    "run_in_child": "._entry",
    "spawn_main": "._entry",
    "set_parent_death_signal": "._entry",
    "serve": "._serve",
    "run_items": "._run",
    "loaded_blas": "._blas",
    "thread_ids": "._blas",
    "STATUS": "manycore._protocol",
    "STATUS_SIZE": "manycore._protocol",
    "FUNCTION_CACHE": "manycore._protocol",
    "TRACK_ITEMS": "manycore._protocol",
    "OUT_OF_BAND": "manycore._protocol",
    "TOKEN": "manycore._protocol",
    "BLOCK_SHIFT": "manycore._protocol",
    "FN_SHIFT": "manycore._protocol",
    "PARTIAL": "manycore._protocol",
    "INPUT_KEPT": "manycore._protocol",
    "UNLOADABLE": "manycore._protocol",
    "NO_FUNCTION": "manycore._protocol",
}


def __getattr__(name: str) -> object:
    where = _MOVED.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # found directly from now on
    return value
