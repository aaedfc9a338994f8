"""Shared fixtures: pools with 2 workers, and a check that no worker process outlives its pool."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import manycore
from manycore import _launch, _platform

from proc_helpers import children, wait_no_new_children

# MANYCORE_PLATFORM=windows-like or macos-like (.ci/run runs the suite once more in each): manycore believes
# Linux's fast paths are absent and runs the code paths those platforms run. A test of a feature the simulated
# platform cannot have is skipped, saying which: ``@pytest.mark.needs("fork")``, or a start method parameter.
SIMULATED = _platform.simulated()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs(*features): skip unless the platform (or the simulated one) has them (manycore._platform)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    available = set(_launch.available_start_methods())
    for item in items:
        marker = item.get_closest_marker("needs")
        if marker is not None:
            # A feature of manycore._platform, or a start method ("forkserver": the platform offers it).
            methods = [f for f in marker.args if f in _launch.START_METHODS and f not in available]
            missing = [f for f in marker.args if f not in _launch.START_METHODS and not _platform.has(f)]
            if methods or missing:
                reason = (
                    _platform.lacks(*missing)
                    if missing
                    else f"start method {methods[0]!r}: {_platform.describe()}"
                )
                item.add_marker(pytest.mark.skip(reason=reason))
                continue
        params = getattr(item, "callspec", None)
        for value in params.params.values() if params is not None else ():
            if isinstance(value, str) and value in _launch.START_METHODS and value not in available:
                item.add_marker(pytest.mark.skip(reason=f"start method {value!r}: {_platform.describe()}"))
                break


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    before = children()
    yield
    assert wait_no_new_children(before) == set()


@pytest.fixture
def pool(no_leftover_processes: None) -> Iterator[manycore.Pool]:
    with manycore.Pool(2) as p:
        yield p


@pytest.fixture(params=["forkserver", "fork", "spawn"])
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def cpu_count() -> int:
    return os.cpu_count() or 1


@pytest.fixture(autouse=True)
def no_shared_pool_between_tests() -> Iterator[None]:
    """``manycore.map``/``imap`` keep one process-wide pool (``manycore._api``): a test that used it must not
    leave its workers, and their shared-memory segments, to a later test's checks of processes and memory."""
    yield
    from manycore import _api

    if _api._live:
        _api._stop_shared()
