"""CPython's own ``multiprocessing.Pool`` tests, run against ``manycore.Pool`` on every start method.

The tests are imported at run time from the ``test`` package installed with the interpreter
(``test._test_multiprocessing``); nothing of them is copied here. For each pool test class and start method a
``unittest.TestCase`` is built the way CPython's ``install_tests_in_module_dict`` builds its own (the test class,
the processes mixin, ``TestCase``), except that ``Pool`` is ``manycore.Pool`` with the start method fixed.
Two of CPython's classes call ``multiprocessing.Pool`` directly instead of ``self.Pool``; while one of their tests
runs, ``multiprocessing.Pool`` is manycore's too.

``EXCUSED`` tests read ``multiprocessing.pool``'s private attributes or never reach manycore: they skip, with the
reason. ``KNOWN_FAILING`` tests fail today, each for the reproduced cause given: they are strict xfails, so a fix
turns the entry into a failure and the entry must go.
"""

from __future__ import annotations

import multiprocessing
import unittest
import weakref
from typing import Any

import pytest
from compat_helpers import check_tables, excuse_private_reads, harness_class

import manycore

try:
    import test._test_multiprocessing as reference
except ImportError as exc:  # a distribution may strip the test package
    pytest.skip(f"CPython's test package is not installed: {exc}", allow_module_level=True)

pytestmark = pytest.mark.timeout(60)

#: Reference classes that exercise a pool (``TestPoolNotLeakOnFailure`` is left out: it feeds
#: ``multiprocessing.pool.Pool`` a fake context and counts its ``Process`` objects, a test of CPython's internals).
CLASSES = ("_TestPool", "_TestPoolWorkerErrors", "_TestPoolWorkerLifetime")

#: All are built; outside MANYCORE_FULL_COMPAT=1 only forkserver runs (``skip_unless_full``).
METHODS = ("forkserver", "fork", "spawn")

#: multiprocessing.pool.Pool's private attributes: a test that reads one is excused (found in its source below).
PRIVATE = frozenset({"_pool", "_processes", "_state", "_repopulate_pool", "_taskqueue", "_cache", "_inqueue"})
EXCUSED: dict[str, str] = {
    "_TestPoolWorkerErrors.test_unpickleable_result": (
        "by design: manycore pickles results with cloudpickle, so the task's lambda result arrives instead of "
        "failing with MaybeEncodingError"
    ),
    "_TestPool.test_imap_handle_iterable_exception": (
        "by design: when imap's input raises at item 7 with chunksize=2, manycore still yields item 6, which was "
        "read before the error, then raises; multiprocessing drops the whole chunk the error falls in"
    ),
    "_TestPoolWorkerLifetime.test_worker_finalization_via_atexit_handler_of_multiprocessing": (
        "runs `from multiprocessing import Pool` in a child interpreter: never reaches manycore"
    ),
}
excuse_private_reads(
    EXCUSED, {name: getattr(reference, name) for name in CLASSES}, PRIVATE, "multiprocessing.pool"
)

KNOWN_FAILING: dict[str, str] = {}


#: Every pool the harness made (weakly: tests check that pools and their tasks get freed).
_MADE: list[weakref.ref[manycore.Pool]] = []


def _pool_factory(method: str) -> Any:
    def make(*args: Any, **kwargs: Any) -> manycore.Pool:
        pool = manycore.Pool(*args, start_method=method, **kwargs)
        _MADE.append(weakref.ref(pool))
        return pool

    return make


class _ManycoreMixin(reference.ProcessesMixin):  # type: ignore[misc,name-defined]
    """CPython's processes mixin with manycore's pool; ``multiprocessing``'s start method set as CPython's
    ``setUpModule`` sets it (the tests' Events, Locks and Managers come from the default context)."""

    START_METHOD = "forkserver"
    _saved_method: str | None = None

    @classmethod
    def setUpClass(cls) -> None:
        cls._saved_method = multiprocessing.get_start_method(allow_none=True)
        multiprocessing.set_start_method(cls.START_METHOD, force=True)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()
        finally:
            multiprocessing.set_start_method(cls._saved_method, force=True)

    def setUp(self) -> None:
        # Two of the reference classes call multiprocessing.Pool, not self.Pool.
        saved = multiprocessing.Pool
        multiprocessing.Pool = self.Pool  # type: ignore[assignment]
        self.addCleanup(setattr, multiprocessing, "Pool", saved)
        # A reference test that fails (or is a known failure) before closing its pool would leave it to a
        # ResourceWarning at garbage collection, which pytest turns into an error of some later test.
        self.addCleanup(_terminate_made_since, len(_MADE))
        super().setUp()


def _terminate_made_since(mark: int) -> None:
    for ref in _MADE[mark:]:
        pool = ref()
        if pool is not None:
            pool.terminate()
            pool.join()
    del _MADE[mark:]


def _build() -> dict[str, type]:
    built: dict[str, type] = {}
    for name in CLASSES:
        base = getattr(reference, name)
        if "processes" not in base.ALLOWED_TYPES:
            continue
        for method in METHODS:
            new_name = f"TestManycore{name[5:]}_{method}"
            built[new_name] = harness_class(
                new_name,
                (base, _ManycoreMixin, unittest.TestCase),
                {"START_METHOD": method, "Pool": staticmethod(_pool_factory(method)), "__module__": __name__},
                reference=base,
                method=method,
                excused=EXCUSED,
                known_failing=KNOWN_FAILING,
            )
    return built


_BUILT = _build()
globals().update(_BUILT)


def test_tables_name_real_tests() -> None:
    classes = {name: getattr(reference, name) for name in CLASSES}
    assert check_tables({"EXCUSED": EXCUSED, "KNOWN_FAILING": KNOWN_FAILING}, classes) == []


def test_every_start_method_is_harnessed() -> None:
    assert len(_BUILT) == len(CLASSES) * len(METHODS), sorted(_BUILT)
