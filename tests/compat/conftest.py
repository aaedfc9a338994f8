"""Keeps only the manycore parametrizations of joblib's suite, and turns its tables into skips and xfails."""

from __future__ import annotations

from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # joblib's suite marks itself for pytest-run-parallel; declared so that --strict-markers accepts it.
    config.addinivalue_line("markers", "thread_unsafe: joblib's suite, not safe to run in threads")
    config.addinivalue_line("markers", "no_cover: joblib's suite, not run under coverage")


def _in_default_run(item: pytest.Item) -> bool:
    """The default run (the suite's time budget) leaves to MANYCORE_FULL_COMPAT=1 the variants that repeat code
    paths: a backend instance instead of its name, and nesting with another process backend."""
    from compat_helpers import FULL

    from manycore.joblib import ManycoreBackend

    if FULL:
        return True
    values = list(item.callspec.params.values())
    if any(isinstance(v, ManycoreBackend) for v in values):
        return False
    others = {"loky", "multiprocessing", "back_compat_backend"}
    return not (
        getattr(item, "originalname", "") in ("test_nested_loop", "test_backend_nesting_level")
        and others & {v for v in values if isinstance(v, str)}
    )


def _uses_manycore(item: pytest.Item) -> bool:
    from manycore.joblib import ManycoreBackend

    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    return any(v == "manycore" or isinstance(v, ManycoreBackend) for v in callspec.params.values())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        module: Any = getattr(item, "module", None)
        if module is None or getattr(module, "__name__", "") != "test_joblib_suite":
            keep.append(item)
            continue
        if not _uses_manycore(item) or not _in_default_run(item):
            dropped.append(item)
            continue
        name = item.name
        base = getattr(item, "originalname", name)
        skip = module.EXCUSED.get(name) or module.EXCUSED.get(base)
        fail = module.KNOWN_FAILING.get(name) or module.KNOWN_FAILING.get(base)
        # joblib's own xfail marks are about its backends (e.g. loky's pull 255); manycore's entries are ours.
        item.own_markers[:] = [m for m in item.own_markers if m.name != "xfail"]
        if skip:
            item.add_marker(pytest.mark.skip(reason=f"excused: {skip}"))
        elif fail:
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"known failing: {fail}"))
            if fail.startswith("hangs"):
                item.add_marker(pytest.mark.timeout(10))
        keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
