"""Fixtures for the fault-injection tests."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from .helpers import child_pids, describe, new_children


@pytest.fixture
def no_orphans() -> Iterator[set[int]]:
    """Fails the test if any process started during it is still alive once the test body returns.

    The body must close or terminate its pools; manycore's terminate() waits for its workers, so no grace
    period is given beyond a short one for the kernel to finish tearing processes down.
    """
    before = child_pids()
    yield before
    # Collect pools and executors kept alive by reference cycles (e.g. an exception's traceback) now, at a
    # known point, rather than at a random allocation during a later test.
    gc.collect()
    left = new_children(before, grace=0.5)
    assert not left, f"processes outlived their pool: {describe(left)}"
