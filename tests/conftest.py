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
