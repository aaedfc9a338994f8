"""The worker side: the code a worker process runs. It imports nothing of the parent side (the scheduler, jobs,
results, options, backends), only the shared protocol, framing, shared memory and pickling modules
(``tests/test_worker_imports.py``).

This file imports nothing: the fork server and spawned workers import ``manycore._worker._entry``, and what
they load is start-up time (W6). The names below are the ones modules outside this package (``_launch``,
``_zygote``, ``_engine``) import from the former ``_worker.py``; they resolve on first use (PEP 562) until those
modules name the new homes, and then this file can be emptied.
"""

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    from ._blas import loaded_blas as loaded_blas
    from ._entry import run_in_child as run_in_child
    from ._entry import set_parent_death_signal as set_parent_death_signal
    from ._entry import spawn_main as spawn_main
    from ._run import run_items as run_items

_MOVED = {
    "run_in_child": "._entry",
    "spawn_main": "._entry",
    "set_parent_death_signal": "._entry",
    "loaded_blas": "._blas",
    "run_items": "._run",
}


def __getattr__(name: str) -> object:
    where = _MOVED.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # found directly from now on
    return value
