"""Shared fixtures: pools with 2 workers, and a check that no worker process outlives its pool."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import manycore

from proc_helpers import children, wait_no_new_children


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
