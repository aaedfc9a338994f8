"""Shared by the reference-suite harnesses: turn {test: reason} tables into skips and strict xfails.

A table key is ``"Class.test_name"`` (every start method) or ``"Class.test_name[method]"`` (one start method);
``Class`` is the reference class's own name (``_TestPool``, ``ProcessPoolShutdownTest``...).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import signal
import traceback
import unittest
from collections.abc import Callable, Mapping
from typing import Any

import pytest

#: ``MANYCORE_FULL_COMPAT=1`` runs every reference test on every start method; the default run keeps the
#: suite inside its time budget (see each harness for what it keeps).
HANG_TIMEOUT = 10

FULL = os.environ.get("MANYCORE_FULL_COMPAT", "") not in ("", "0")


def skip_unless_full(cls: type, method: str) -> None:
    """Skips a generated class outside the full run, but keeps it: a worker finds it by name when a test sends
    one of its (class)methods, whatever that worker's environment says about the full run."""
    from manycore import _launch, _platform

    if method not in _launch.available_start_methods():
        cls.__unittest_skip__ = True  # type: ignore[attr-defined]
        cls.__unittest_skip_why__ = f"start method {method!r}: {_platform.describe()}"  # type: ignore[attr-defined]
    elif not FULL and method != _launch.default_start_method():
        cls.__unittest_skip__ = True  # type: ignore[attr-defined]
        cls.__unittest_skip_why__ = (  # type: ignore[attr-defined]
            f"the {method} start method runs with MANYCORE_FULL_COMPAT=1 (.ci/run sets it for one interpreter); "
            "the default run keeps to manycore's default start method, for the suite's time budget"
        )


def harness_class(
    name: str,
    bases: tuple[type, ...],
    attrs: dict[str, Any],
    *,
    reference: type,
    method: str,
    excused: Mapping[str, str],
    known_failing: Mapping[str, str],
) -> type:
    """A class running ``reference``'s tests against manycore on one start method: ``attrs`` (the factory, the
    module) plus the reference's tests as the tables mark them; skipped outside the full run but kept."""
    cls = type(name, bases, {**attrs, **marked_tests(reference, method, excused, known_failing)})
    cls.__qualname__ = name
    skip_unless_full(cls, method)
    return cls


def private_reads(test: Callable[..., Any], attributes: frozenset[str]) -> list[str]:
    """The private attributes of the reference implementation that ``test``'s own source reads or sets."""
    try:
        source = inspect.getsource(test)
    except (OSError, TypeError):
        return []
    return sorted(set(re.findall(r"\.(_[A-Za-z]\w*)\b", source)) & attributes)


def excuse_private_reads(
    excused: dict[str, str], classes: Mapping[str, type], attributes: frozenset[str], owner: str
) -> None:
    """Adds to ``excused`` every test of ``classes`` ({table name: class}) that reads one of ``attributes``.

    Found in the installed source, so that each interpreter's version of a test is judged by what it reads.
    """
    for cls_name, cls in classes.items():
        for name in dir(cls):
            test = getattr(cls, name)
            if not (name.startswith("test") and callable(test)):
                continue
            found = private_reads(test, attributes)
            if found:
                excused.setdefault(
                    f"{cls_name}.{name}", f"reads {owner}'s private attributes ({', '.join(found)})"
                )


def lookup(table: Mapping[str, str], cls_name: str, test: str, method: str) -> str | None:
    return table.get(f"{cls_name}.{test}[{method}]") or table.get(f"{cls_name}.{test}")


def marked_tests(
    base: type, method: str, excused: Mapping[str, str], known_failing: Mapping[str, str]
) -> dict[str, Callable[..., Any]]:
    """Copies of ``base``'s ``test_*`` methods, skipped or xfailed as the tables say, for a subclass.

    Each copy is a new function (a mark set on the inherited one would reach every start method's class).
    """
    out: dict[str, Callable[..., Any]] = {}
    for name in dir(base):
        if not name.startswith("test"):
            continue
        original = getattr(base, name)
        if not callable(original):
            continue
        skip = lookup(excused, base.__name__, name, method)
        fail = lookup(known_failing, base.__name__, name, method)
        if skip is None and fail is None:
            continue

        hangs = fail is not None and fail.startswith("hangs")

        @functools.wraps(original)
        def copy(
            self: unittest.TestCase, _original: Callable[..., Any] = original, _hangs: bool = hangs
        ) -> Any:
            if _hangs:
                # pytest-timeout's alarm fires once, in the test body; unittest then runs tearDown and the
                # cleanups (an executor's shutdown, a pool's join) inside the same pytest call, unguarded, and
                # a hung executor hangs there next (seen on 3.13: Executor.shutdown -> Scheduler.join).
                self.tearDown = _bounded(self.tearDown)  # type: ignore[method-assign]
                self.doCleanups = _bounded(self.doCleanups)  # type: ignore[method-assign]
            # A known failure is re-raised as text: the original exception's frames would keep the test's
            # objects alive until some later test's garbage collection.
            failure = None
            try:
                return _original(self)
            except Exception as exc:
                failure = "".join(traceback.format_exception(exc))
            raise AssertionError(failure)

        if skip is not None:
            copy = unittest.skip(f"excused: {skip}")(copy)
        else:
            copy = pytest.mark.xfail(strict=True, reason=f"known failing: {fail}")(copy)
            if fail.startswith("hangs"):
                # A known hang costs this much of the suite's budget, not the default 120 s.
                copy = pytest.mark.timeout(HANG_TIMEOUT)(copy)
        out[name] = copy
    return out


def _bounded(step: Callable[[], Any]) -> Callable[[], Any]:
    """``step`` under its own HANG_TIMEOUT alarm (TimeoutError in the main thread). It takes the place of
    pytest-timeout's alarm, which is spent or cancelled by then: re-armed after ``step`` it could fire in pytest's
    own reporting."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(
            f"{getattr(step, '__name__', step)} still running after {HANG_TIMEOUT} s (a known hang)"
        )

    @functools.wraps(step)
    def run() -> Any:
        saved = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, HANG_TIMEOUT)
        try:
            return step()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, saved)

    return run


def check_tables(
    tables: Mapping[str, Mapping[str, str]],
    classes: Mapping[str, type],
    other_versions: frozenset[str] = frozenset(),
) -> list[str]:
    """Table entries that name no test of the harnessed classes (a typo would silently excuse nothing);
    ``other_versions``: keys of tests that only some CPython versions have."""
    stale = []
    for table_name, table in tables.items():
        for key in table:
            if key in other_versions:
                continue
            cls_name, _, rest = key.partition(".")
            test = rest.split("[", 1)[0]
            cls = classes.get(cls_name)
            if cls is None or not callable(getattr(cls, test, None)):
                stale.append(f"{table_name}: {key}")
    return stale
