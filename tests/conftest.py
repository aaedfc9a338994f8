"""Shared fixtures: pools with 2 workers, and a check that no worker process outlives its pool."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import psutil
import pytest

import manycore


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


def wait_no_new_children(before: set[int], timeout: float = 5.0) -> set[int]:
    """Children of this process that appeared since `before` and are still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        extra = children() - before
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.02)


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
