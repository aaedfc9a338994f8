"""Choosing how many items go into one chunk, from measured costs (``chunksize="auto"``).

Each chunk costs a fixed overhead (a message each way, pickling, a wake-up of the supervisor: about 0.25 ms of
parent CPU, measured on W2) and its items' run time. Too small a chunk and the overhead dominates (a million
tiny items); too large and the last chunks leave cores idle (a few slow items at the end of the input). So:

- before anything is measured, every chunk holds one item: a probe. Slow items are never over-committed, and
  neither are big results (a chunk of ten 16 MiB results needs a 160 MiB segment of fresh memory); after
  that, on a lazy input (imap over a generator), sizes at most double from one chunk to the next;
- once chunks come back, the size targets ``TARGET_SECONDS`` of work per chunk from the average item cost
  reported by the workers (compute time only, so a busy parent does not distort it);
- when the number of items left is known, no chunk takes more than a ``1 / (2 * workers)`` share of them
  (guided self-scheduling), so the tail is split finely and imbalance at the end of the input is absorbed,
  down to ``MIN_TAIL_SECONDS`` of work per chunk;
- except with ``rounds`` (Dask and Ray, where a chunk costs milliseconds): the items left are planned as
  equal chunks, as many for each worker, which ends every worker at once on uniform items with a fraction of
  the calls a finely split tail takes. The price: a few slow items at the very end are not absorbed (on Ray,
  W3's input took 0.96 s in rounds and 0.97 s in Ray's own Pool, against an ideal 0.55 s); ``chunksize=1``
  spreads such items. On items of random cost (exponential, mean 10 ms) rounds took 1.07 s, Ray's Pool
  1.09 s and a guided tail 1.22 s;
- a chunk's pickled size, arguments or results, is capped near ``MAX_CHUNK_BYTES``, so that streaming large
  items keeps memory flat.
"""

from __future__ import annotations

import math

# When every core runs a worker, the parent's per-chunk work is taken from them. On W2's variant with items of
# exactly 10 ms of CPU time (benchmarks/run.py), 10 ms chunks gave a speed-up of 1.91 on 2 cores, 50 ms and
# 100 ms ones 1.96 (multiprocessing with its static chunks of 25 items: 1.99). The tail split below keeps
# larger targets from costing idle cores at the end.
TARGET_SECONDS = 0.050
# The tail split never goes below this much work per chunk: finer than that, messages cost more than idle cores.
MIN_TAIL_SECONDS = 0.002
# Items the worker tracks as one block (see Chunker.block_shift): at most this much work per block (15-30 µs
# after rounding down to a power of two), and none for items that cost BLOCK_MAX_COST or more. A block costs
# ~0.6 µs of bookkeeping in the worker: 2-4% of its work.
BLOCK_SECONDS = 30e-6
BLOCK_MAX_COST = 10e-6
MAX_CHUNK_BYTES = 1 << 20


class Chunker:
    """Decides chunk sizes for one job; ``fixed`` is the user's explicit ``chunksize``."""

    __slots__ = (
        "_items",
        "_last",
        "_plan_left",
        "_plan_size",
        "_seconds",
        "_size_in",
        "_size_out",
        "fixed",
        "rounds",
        "tail",
        "target",
        "workers",
    )

    def __init__(
        self,
        fixed: int | None,
        workers: int,
        target: float = TARGET_SECONDS,
        tail: float = MIN_TAIL_SECONDS,
        *,
        rounds: bool = False,
    ) -> None:
        self.fixed = fixed
        self.target = target  # seconds of work per chunk: more where each chunk costs more to schedule
        self.tail = tail  # the tail split's floor, in seconds of work: more, too, where chunks cost more
        self.rounds = rounds  # sized inputs go in equal rounds of chunks instead of a guided tail
        self.workers = max(1, workers)
        self._seconds = 0.0  # decayed sums of measured compute time and of items: their ratio is the cost
        self._items = 0.0
        # Pickled bytes per item, arguments and results apart: one estimate for both would let small results
        # water down the size of big arguments (and the other way round).
        self._size_in = 0.0
        self._size_out = 0.0
        self._last = 1  # the previous chunk's size: sizes at most double from one chunk to the next
        # With rounds: the chunks still planned for the items left, and the size the plan aimed at.
        self._plan_left = 0
        self._plan_size = 0

    @property
    def probing(self) -> bool:
        """Whether the next automatic chunk is a probe (no item's cost measured yet)."""
        return self.fixed is None and not self._items

    def next_size(self, remaining: int | None) -> int:
        if self.fixed is not None:
            return self.fixed
        if not self._items:
            return 1  # nothing measured yet: the first chunks (one per slot) are probes
        size = max(1, int(self.target * self._items / max(self._seconds, 1e-9)))
        per_item = max(self._size_in, self._size_out)
        if per_item:
            size = min(size, max(1, int(MAX_CHUNK_BYTES / per_item)))
        if remaining is not None and self.rounds:
            size = self._planned(size, remaining)
        elif remaining is not None:
            floor = int(self.tail * self._items / max(self._seconds, 1e-9))
            size = min(size, max(1, floor, math.ceil(remaining / (2 * self.workers))))
        else:
            # A lazy input grows its chunks gradually: one early measurement (often of a 1-item probe) must not
            # commit 100,000 items at once, which an imap would read ahead of its consumer. A sized input is
            # in memory already, and the tail split above bounds what one chunk can leave unbalanced, so it
            # goes straight to the target: a ramp of 2, 4, 8, ... costs a call each, milliseconds on Dask or Ray.
            size = min(size, 2 * self._last)
        size = max(1, size)
        self._last = size
        return size

    def _planned(self, size: int, remaining: int) -> int:
        """The next of equal chunks that cover ``remaining``, a whole number of them for each worker.

        On uniform items every worker then runs as many chunks of the same size and they all finish
        together, which a guided tail only approaches with many more (and smaller) chunks: on Ray, W2 took
        18 calls with the guided tail (and 0.25 s chunks) and takes 6 in rounds (2 probes, then 2 rounds of
        2), at 2-3 ms of the driver's CPU each. The plan is made again when it runs out, or at the start of a
        round when the measured cost has moved the target size by more than half; never within a round,
        whose chunks stay equal.
        """
        moved = not self._plan_size / 1.5 <= size <= self._plan_size * 1.5
        if self._plan_left <= 0 or (moved and self._plan_left % self.workers == 0):
            per_round = self.workers * size
            self._plan_left = self.workers * max(1, round(remaining / per_round))
            self._plan_size = size
        planned = math.ceil(remaining / self._plan_left)
        self._plan_left -= 1
        return planned

    def cost_per_item(self) -> float | None:
        """Measured seconds of work per item (decayed average), or None before any chunk came back."""
        return self._seconds / self._items if self._items else None

    def block_shift(self) -> int:
        """k such that a worker tracks its running item in blocks of 2**k items (see _worker._run.run_items).

        0 (each item) while the cost is unknown or at least ``BLOCK_MAX_COST``; else blocks of at most
        ``BLOCK_SECONDS`` of work. A block is what a worker's death costs under at most once (all its items
        fail), so blocks stay short: ~20 µs of cheap items, where tracking each would cost ~75 ns an item.
        """
        cost = self.cost_per_item()
        if cost is None or cost >= BLOCK_MAX_COST:
            return 0
        return min(31, max(0, int(BLOCK_SECONDS / max(cost, 1e-9)).bit_length() - 1))

    def observe_time(self, items: int, seconds: float) -> None:
        if items <= 0:
            return
        # Item-weighted, so a 1-item probe (mostly fixed overhead) barely counts next to a 5,000-item chunk;
        # decayed, so a job whose items get slower (or faster) is followed.
        self._seconds = 0.5 * self._seconds + seconds
        self._items = 0.5 * self._items + items

    def observe_bytes(self, items: int, nbytes: int, *, results: bool = False) -> None:
        """The pickled size of a chunk's arguments (or, with ``results``, of its results)."""
        if items <= 0 or self.fixed is not None:
            return
        per_item = nbytes / items
        old = self._size_out if results else self._size_in
        # Quick to rise, slow to fall: one chunk of big items is enough to shrink the next chunks.
        new = max(old * 0.5 + per_item * 0.5, per_item)
        if results:
            self._size_out = new
        else:
            self._size_in = new
