"""joblib's own ``test_parallel.py``, with "manycore" among its process backends.

The installed ``joblib/test/test_parallel.py`` is read at run time, its one ``PROCESS_BACKENDS = [...]`` list gets
"manycore" appended in memory, and the result runs as ``joblib.test.test_parallel`` (the name matters: the tests'
helper functions are pickled by reference, and a worker that imports that name gets the installed module, whose
helpers are the same). Nothing of joblib's is copied here. Only the tests parametrized with the manycore backend
are kept (``conftest.py`` deselects the rest): the other backends are joblib's to test.

``EXCUSED`` tests check loky's or multiprocessing's own internals; ``KNOWN_FAILING`` ones fail for the cause given
(strict xfails). Keys are test node names without the module, e.g. ``test_abort_backend[manycore-2]``, or a bare
function name for all of its manycore parametrizations.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

joblib = pytest.importorskip("joblib")

import manycore.joblib  # noqa: E402,F401  (registers "manycore" before the suite reads joblib's BACKENDS)

MODULE = "joblib.test.test_parallel"

_UNREGISTERED = (
    "a {} worker was never told to import manycore.joblib, so the nested backend='manycore' is unknown there "
    "(joblib backends register per process; joblib has no plug-in entry point)"
)
_CHILD_SCRIPT = (
    "runs a child interpreter whose script names backend='manycore' without importing manycore.joblib "
    "(joblib backends register per process)"
)
_MEMMAP = (
    "checks joblib's memmapping (np.memmap arguments, temp folder): manycore moves arrays by shared memory"
)
EXCUSED: dict[str, str] = {
    "test_nested_loop[loky-manycore]": _UNREGISTERED.format("loky"),
    "test_nested_loop[back_compat_backend-manycore]": _UNREGISTERED.format("loky"),
    "test_backend_nesting_level[parallel_config-manycore-loky]": _UNREGISTERED.format("loky"),
    "test_backend_nesting_level[parallel_backend-manycore-loky]": _UNREGISTERED.format("loky"),
    "test_backend_nesting_level[parallel_config-manycore-multiprocessing]": _UNREGISTERED.format(
        "multiprocessing"
    ),
    "test_backend_nesting_level[parallel_backend-manycore-multiprocessing]": _UNREGISTERED.format(
        "multiprocessing"
    ),
    "test_parallel_with_interactively_defined_functions": _CHILD_SCRIPT,
    "test_parallel_with_unpicklable_functions_in_args": _CHILD_SCRIPT,
    "test_auto_memmap_on_arrays_from_generator": _MEMMAP,
    "test_memmapping_leaks": _MEMMAP,
}

KNOWN_FAILING: dict[str, str] = {}

#: joblib warns when a generator of results is closed before its end (the tests do it on purpose); the warning
#: is joblib's about its own dispatch, and arrives as an "exception ignored" at garbage collection.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:.*(tasks have been successfully executed|tasks which were still being processed):UserWarning"
    ),
    pytest.mark.timeout(60),
]


def _load() -> ModuleType:
    import joblib.test

    path = Path(joblib.test.__file__).with_name("test_parallel.py")
    source = path.read_text()
    pattern = re.compile(r'^(\s*PROCESS_BACKENDS = \["multiprocessing", "loky")\]', re.MULTILINE)
    new_source, count = pattern.subn(r'\1, "manycore"]', source)
    if count != 1:
        pytest.skip(
            f"{path} no longer has the PROCESS_BACKENDS list this harness edits", allow_module_level=True
        )
    module = ModuleType(MODULE)
    module.__file__ = str(path)
    module.__package__ = "joblib.test"
    saved = sys.modules.get(MODULE)
    sys.modules[MODULE] = module
    try:
        exec(compile(new_source, str(path), "exec"), module.__dict__)
    except BaseException:
        if saved is None:
            sys.modules.pop(MODULE, None)
        else:
            sys.modules[MODULE] = saved
        raise
    return module


suite = _load()
for _name, _value in vars(suite).items():
    # The suite's tests and fixtures, not its module-level pytestmark (a marker this project does not declare).
    if (
        _name.startswith("test_")
        or hasattr(_value, "_pytestfixturefunction")
        or hasattr(_value, "_fixture_function_marker")
    ):
        globals()[_name] = _value
