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
from compat_helpers import check_tables, excuse_private_reads, harness_class

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
    "ProcessPoolExecutorTest.test_python_finalization_error": (
        "mocks threading._start_joinable_thread to fail CPython's second internal thread (its queue feeder); "
        "manycore's threads are not CPython's"
    ),
}

KNOWN_FAILING: dict[str, str] = {}


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
# Not left in the module: pytest collects any TestCase class it finds there, and _cls would run one reference
# class again with CPython's own executor.
del _cls, _generic_name, _test
excuse_private_reads(
    EXCUSED, {generic: cls for cls, generic, _ in REFERENCE.values()}, PRIVATE, "concurrent.futures.process"
)


def _build() -> dict[str, type]:
    built: dict[str, type] = {}
    for name, (base, generic, method) in sorted(REFERENCE.items()):
        # marked_tests looks tables up by the class's __name__: give it the generic name.
        new_name = f"TestManycore_{name}"
        built[new_name] = harness_class(
            new_name,
            (_ManycoreExecutorMixin, base),
            {"executor_type": manycore.Executor, "__module__": __name__},
            reference=type(generic, (base,), {}),
            method=method,
            excused=EXCUSED,
            known_failing=KNOWN_FAILING,
        )
    return built


_BUILT = _build()
globals().update(_BUILT)


def test_tables_name_real_tests() -> None:
    classes = {generic: cls for cls, generic, _ in REFERENCE.values()}
    newer = frozenset({"ProcessPoolExecutorTest.test_python_finalization_error"})  # 3.12+
    assert check_tables({"EXCUSED": EXCUSED, "KNOWN_FAILING": KNOWN_FAILING}, classes, newer) == []


def test_every_start_method_is_harnessed() -> None:
    assert {method for _, _, method in REFERENCE.values()} == set(PREFIXES.values())
