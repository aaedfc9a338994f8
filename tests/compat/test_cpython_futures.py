"""CPython's own ``ProcessPoolExecutor`` tests, run against ``manycore.Executor`` on every start method.

The tests come at run time from the ``test`` package installed with the interpreter: ``test.test_concurrent_futures``
is one module up to 3.10 and a package from 3.13 (the 3.11 and 3.12 builds here do not ship it). Every process-pool
test class there (``ProcessPool{Fork,Forkserver,Spawn}...Test``, built by CPython's ``create_executor_tests``) gets
a subclass whose ``executor_type`` is ``manycore.Executor``; CPython's mixin passes ``mp_context``, which names
the start method. While a test runs, ``concurrent.futures.ProcessPoolExecutor`` is manycore's too, for the tests
that call it directly.

Table keys name the class without its start-method prefix (``ProcessPoolExecutorTest.test_map_chunksize``), with
``[fork]`` etc. for one start method. ``EXCUSED`` tests read ``concurrent.futures.process``'s private attributes
or test a behaviour manycore does not have by design; ``KNOWN_FAILING`` tests fail today for the cause given
(strict xfails: a fix turns the entry into a failure and the entry must go).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import pkgutil
import unittest
from types import ModuleType
from typing import Any

import pytest
from compat_helpers import check_tables, excuse_private_reads, marked_tests, skip_unless_full

import manycore

try:
    import test.test_concurrent_futures as package
except ImportError as exc:
    pytest.skip(
        f"this interpreter does not ship CPython's test.test_concurrent_futures ({exc}); "
        "the pyenv builds of 3.11 and 3.12 here leave it out, CI runs this suite on 3.10 and 3.13",
        allow_module_level=True,
    )

pytestmark = pytest.mark.timeout(60)

#: start-method prefixes of CPython's generated class names, longest first ("ProcessPoolFork" is a prefix of
#: "ProcessPoolForkserver").
PREFIXES = {"ProcessPoolForkserver": "forkserver", "ProcessPoolFork": "fork", "ProcessPoolSpawn": "spawn"}

#: concurrent.futures.process's private attributes: a test that reads one is excused (found in its source below).
PRIVATE = frozenset(
    {
        "_processes",
        "_max_workers",
        "_mp_context",
        "_executor_manager_thread",
        "_call_queue",
        "_pending_work_items",
        "_result_queue",
        "_work_ids",
        "_broken",
        "_shutdown_thread",
    }
)
_BROKEN = (
    "by design a killed worker fails only the future of the item it ran (WorkerLostError, a BrokenProcessPool); "
    "the executor goes on, so CPython's 'the whole executor is broken' expectation does not apply"
)
EXCUSED: dict[str, str] = {
    "ProcessPoolExecutorTest.test_killed_child": _BROKEN,
    "ProcessPoolExecutorTest.test_ressources_gced_in_workers": (
        "KNOWN FAILING, skipped rather than xfailed: a Manager Event proxy as an argument kills the worker "
        "(WorkerLostError, exit code 1; the worker's authkey differs, 'AuthenticationError: digest sent was "
        "rejected'), and the executor still holds the argument, which is collected during a later test after its "
        "Manager is gone and fails that test with an 'exception ignored' (syncobj, lifecycle)"
    ),
    "ProcessPoolExecutorTest.test_python_finalization_error": (
        "mocks threading._start_joinable_thread to fail CPython's second internal thread (its queue feeder); "
        "manycore's threads are not CPython's"
    ),
}

KNOWN_FAILING: dict[str, str] = {
    # serial: exception types
    "ExecutorDeadlockTest.test_error_at_task_pickle": (
        "an argument whose __reduce__ raises PicklingError gives SerializationError, not the PicklingError"
    ),
    "ExecutorDeadlockTest.test_error_during_result_pickle_on_worker": (
        "a result whose __reduce__ raises PicklingError gives SerializationError, not the PicklingError"
    ),
    "ExecutorDeadlockTest.test_exit_during_result_pickle_on_worker": (
        "sys.exit() while the worker pickles a result kills the worker (WorkerLostError, exit code 1) instead of "
        "the SystemExit reaching the future"
    ),
    "ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler": (
        "a result that fails to unpickle in the parent gives SerializationError for that future; CPython expects "
        "BrokenProcessPool (manycore's choice may be by design: then move this entry to EXCUSED)"
    ),
    "ProcessPoolExecutorTest.test_traceback": (
        "the remote traceback is manycore.errors.RemoteTraceback, not concurrent.futures.process._RemoteTraceback"
    ),
    # hardsup: the supervisor cannot die silently
    "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler": (
        "hangs: a result whose unpickling calls sys.exit() (SystemExit in the parent's supervisor thread) never "
        "completes its future"
    ),
    # lifecycle: references held
    "ProcessPoolExecutorTest.test_free_reference": "the executor still references a submitted argument once its future is done",
    "ProcessPoolExecutorTest.test_no_stale_references": (
        "an object passed to submit() is not freed after its future completes"
    ),
    # options: error message
    "ProcessPoolExecutorTest.test_max_workers_negative": (
        "max_workers=0 says 'max_workers must be at least 1, not 0'; CPython's test matches 'max_workers must be "
        "greater than 0'"
    ),
}


def _modules() -> list[ModuleType]:
    if not hasattr(package, "__path__"):  # 3.10: one module
        return [package]
    names = sorted(
        info.name for info in pkgutil.iter_modules(package.__path__) if info.name.startswith("test_")
    )
    return [importlib.import_module(f"{package.__name__}.{name}") for name in names]


def _source(test: Any) -> str:
    try:
        return inspect.getsource(test)
    except (OSError, TypeError):
        return ""


def _generic(name: str) -> tuple[str, str] | None:
    for prefix, method in PREFIXES.items():
        if name.startswith(prefix):
            return name[len(prefix) :], method
    return None


class _ManycoreExecutorMixin:
    """Makes ``concurrent.futures.ProcessPoolExecutor`` manycore's while a test runs."""

    def setUp(self) -> None:
        saved = concurrent.futures.ProcessPoolExecutor
        concurrent.futures.ProcessPoolExecutor = manycore.Executor  # type: ignore[misc]
        self.addCleanup(setattr, concurrent.futures, "ProcessPoolExecutor", saved)  # type: ignore[attr-defined]
        super().setUp()  # type: ignore[misc]


def _reference_classes() -> dict[str, tuple[type, str, str]]:
    """{reference class name: (class, generic name, start method)} for every process-pool test class."""
    found: dict[str, tuple[type, str, str]] = {}
    for module in _modules():
        for name, obj in vars(module).items():
            if not (isinstance(obj, type) and issubclass(obj, unittest.TestCase)):
                continue
            parsed = _generic(name)
            if parsed is None or getattr(obj, "ctx", None) != parsed[1]:
                continue
            found[name] = (obj, *parsed)
    return found


REFERENCE = _reference_classes()
for _cls, _generic_name, _ in REFERENCE.values():
    for _test in dir(_cls):
        if _test.startswith("test") and "executor_type.__name__" in _source(getattr(_cls, _test)):
            EXCUSED.setdefault(
                f"{_generic_name}.{_test}",
                "runs a child interpreter that imports concurrent.futures.<executor_type.__name__>, i.e. the "
                "abstract concurrent.futures.Executor: never reaches manycore",
            )
excuse_private_reads(
    EXCUSED, {generic: cls for cls, generic, _ in REFERENCE.values()}, PRIVATE, "concurrent.futures.process"
)


def _build() -> dict[str, type]:
    built: dict[str, type] = {}
    for name, (base, generic, method) in sorted(REFERENCE.items()):
        # marked_tests looks tables up by the class's __name__: give it the generic name.
        lookup_base = type(generic, (base,), {})
        attrs: dict[str, Any] = {"executor_type": manycore.Executor, "__module__": __name__}
        attrs.update(marked_tests(lookup_base, method, EXCUSED, KNOWN_FAILING))
        new_name = f"TestManycore_{name}"
        cls = type(new_name, (_ManycoreExecutorMixin, base), attrs)
        cls.__qualname__ = new_name
        skip_unless_full(cls, method)
        built[new_name] = cls
    return built


_BUILT = _build()
globals().update(_BUILT)


def test_tables_name_real_tests() -> None:
    classes = {generic: cls for cls, generic, _ in REFERENCE.values()}
    newer = frozenset({"ProcessPoolExecutorTest.test_python_finalization_error"})  # 3.12+
    assert check_tables({"EXCUSED": EXCUSED, "KNOWN_FAILING": KNOWN_FAILING}, classes, newer) == []


def test_every_start_method_is_harnessed() -> None:
    assert {method for _, _, method in REFERENCE.values()} == set(PREFIXES.values())
