"""How the engine scheduler hands chunks to Dask and Ray, checked step by step on an engine the test drives.

``SteppedEngine`` is a complete engine: it runs each chunk's items for real with ``run_chunk``, but only
when the test says so, and it reports the compute time the test chooses (10 ms per item) instead of the
microseconds ``square`` takes. That makes every sizing decision deterministic, which timing a real cluster
cannot; the real engines run the contract tests in tests/contract.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import manycore
from manycore._engine import Engine, run_chunk
from manycore._jobs import Chunk

from tasks import square

pytestmark = pytest.mark.timeout(60)

ITEM_SECONDS = 0.010


class SteppedEngine(Engine):
    name = "stepped"
    slots = 2
    chunk_seconds = 0.25

    def __init__(self) -> None:
        self.pending: list[tuple[Chunk, Callable[[Chunk, Any, BaseException | None], None]]] = []
        self.sizes: list[int] = []  # of every chunk sent, in order

    def run(self, chunk: Chunk, done: Callable[[Chunk, Any, BaseException | None], None]) -> None:
        self.pending.append((chunk, done))
        self.sizes.append(len(chunk.items))

    def finish_oldest(self) -> None:
        chunk, done = self.pending.pop(0)
        values, errors, _ = run_chunk(chunk.job.fn, chunk.job.kind, chunk.first, list(chunk.items))
        done(chunk, (values, errors, ITEM_SECONDS * len(chunk.items)), None)


def test_one_probe_per_slot_then_equal_rounds() -> None:
    engine = SteppedEngine()
    with manycore.Pool(backend=engine) as pool:
        result = pool.map_async(square, range(200))
        # Nothing measured yet: one 1-item probe per slot, not the two per slot the queue depth allows.
        assert engine.sizes == [1, 1]
        engine.finish_oldest()
        # 10 ms items and 0.25 s chunks: the 198 items left go in 4 rounds of 2 equal chunks, up to the
        # depth of 2 chunks per slot at once.
        assert engine.sizes == [1, 1, 25, 25, 25]
        while engine.pending:
            engine.finish_oldest()
        assert engine.sizes[2:] == [25, 25, 25, 25, 25, 25, 24, 24]
        assert result.get(timeout=10) == [x * x for x in range(200)]


def test_calls_are_not_held_back_as_probes() -> None:
    """apply_async has no chunk size to learn: it fills the queue depth at once."""
    engine = SteppedEngine()
    with manycore.Pool(backend=engine) as pool:
        results = [pool.apply_async(square, (x,)) for x in range(6)]
        assert engine.sizes == [1, 1, 1, 1]
        while engine.pending:
            engine.finish_oldest()
        assert [r.get(timeout=10) for r in results] == [x * x for x in range(6)]
