"""The automatic chunk-size policy, unit-tested without processes."""

from __future__ import annotations

from manycore._chunking import MAX_CHUNK_BYTES, TARGET_SECONDS, Chunker


def settle(c: Chunker, remaining: int | None) -> int:
    """The size the chunker settles on once its gradual growth is over."""
    return [c.next_size(remaining) for _ in range(40)][-1]


def test_fixed_chunksize_is_respected() -> None:
    c = Chunker(7, workers=2)
    assert [c.next_size(100), c.next_size(None), c.next_size(3)] == [7, 7, 7]


def test_one_item_probes_before_any_measurement() -> None:
    c = Chunker(None, workers=2)
    assert [c.next_size(None) for _ in range(5)] == [1, 1, 1, 1, 1]
    c.observe_time(1000, 1e-4)
    # Then growth by doubling at most: one early measurement does not commit 100,000 items at once.
    assert [c.next_size(None) for _ in range(5)] == [2, 4, 8, 16, 32]


def test_a_sized_input_goes_straight_to_the_target_after_the_probes() -> None:
    """No 2, 4, 8, ... ramp when the input is in memory: each step would cost a call (milliseconds on Ray)."""
    c = Chunker(None, workers=2)
    assert c.next_size(1_000_000) == 1
    c.observe_time(1000, 1000 * 1e-6)  # 1 µs per item
    assert c.next_size(1_000_000) == int(TARGET_SECONDS / 1e-6)
    lazy = Chunker(None, workers=2)
    assert lazy.next_size(None) == 1
    lazy.observe_time(1000, 1000 * 1e-6)
    assert lazy.next_size(None) == 2  # a lazy input still at most doubles


def test_big_results_cap_the_chunk_size() -> None:
    c = Chunker(None, workers=2)
    c.observe_time(4, 4e-6)
    c.observe_bytes(1, 16 << 20, results=True)  # one 16 MiB result
    assert c.next_size(None) == 1


def test_small_results_do_not_lift_the_cap_set_by_big_arguments() -> None:
    c = Chunker(None, workers=2)
    c.observe_time(1000, 1e-4)  # cheap items: time alone would allow huge chunks
    c.observe_bytes(100, 100 * 1024)  # 1 KiB arguments
    for _ in range(10):
        c.observe_bytes(1000, 8000, results=True)  # tiny results
    assert c.next_size(None) <= MAX_CHUNK_BYTES // 1024


def test_size_targets_the_time_budget_from_measured_cost() -> None:
    c = Chunker(None, workers=2)
    c.observe_time(10_000, 10_000 * 1e-6)  # 1 µs per item
    assert settle(c, None) == int(TARGET_SECONDS / 1e-6)


def test_a_one_item_probe_hardly_moves_the_estimate() -> None:
    c = Chunker(None, workers=2)
    c.observe_time(1, 1e-3)  # mostly fixed overhead
    c.observe_time(10_000, 10_000 * 1e-7)
    assert settle(c, None) > 0.5 * TARGET_SECONDS / 1e-7 * 0.5


def test_slow_items_get_one_per_chunk() -> None:
    c = Chunker(None, workers=2)
    c.observe_time(1, 0.2)
    assert c.next_size(1000) == 1


def test_tail_is_split_across_workers() -> None:
    c = Chunker(None, workers=2)
    c.observe_time(100, 100 * 0.005)  # 5 ms items: the time budget alone allows 10 per chunk
    assert c.next_size(4) == 1
    c = Chunker(None, workers=2)
    c.observe_time(1000, 1000 * 1e-6)
    assert settle(c, 1_000_000) == int(TARGET_SECONDS / 1e-6)
    assert c.next_size(4000) == 2000  # floor: 2 ms of work, more than a quarter of 4,000 items
    assert settle(c, 40_000) == 10_000  # a quarter of what is left


def test_a_costlier_engine_splits_its_tail_less_finely() -> None:
    """An engine with a guided tail (the thread backend) passes a floor of a quarter of its target."""
    local = Chunker(None, workers=2)
    engine = Chunker(None, workers=2, target=0.25, tail=0.0625)
    for c in (local, engine):
        c.observe_time(100, 100 * 0.010)  # 10 ms items
        settle(c, 1000)
    assert local.next_size(8) == 2  # a quarter of 8: the local tail goes down to one item per chunk
    assert engine.next_size(8) == 6  # the floor: 62.5 ms of work, 6 items


def test_large_items_cap_the_chunk_bytes() -> None:
    c = Chunker(None, workers=2)
    c.observe_time(1000, 1000 * 1e-7)
    c.observe_bytes(100, 100 * 1024)
    assert settle(c, None) == MAX_CHUNK_BYTES // 1024


def test_streaming_1_kib_items_keeps_chunks_near_1_mib(no_leftover_processes: None) -> None:
    """W7's shape: tiny results must not lift the cap that 1 KiB arguments set (parent memory stays flat)."""
    import manycore

    with manycore.Pool(2) as pool:
        it = pool.imap(len, (bytes(1024) for _ in range(50_000)))
        assert sum(it) == 50_000 * 1024
        assert it.chunker.next_size(None) <= 2 * MAX_CHUNK_BYTES // 1024


def drain(c: Chunker, remaining: int) -> list[int]:
    """The sizes the chunker gives until ``remaining`` items are all in chunks."""
    sizes = []
    while remaining:
        size = min(remaining, c.next_size(remaining))
        sizes.append(size)
        remaining -= size
    return sizes


def test_rounds_split_a_sized_input_into_equal_chunks_per_worker() -> None:
    """Dask and Ray: as many chunks of the same size for each worker, so uniform items end together."""
    c = Chunker(None, workers=2, target=0.25, rounds=True)
    c.observe_time(1, 0.010)  # 10 ms items: 25 per chunk
    sizes = drain(c, 196)
    # 4 rounds of 2, not a guided tail of ever smaller chunks
    assert sizes == [25, 25, 25, 25, 24, 24, 24, 24]
    guided = Chunker(None, workers=2, target=0.25, tail=0.0625)
    guided.observe_time(1, 0.010)
    assert len(drain(guided, 196)) > len(sizes)


def test_rounds_of_tiny_items_are_one_chunk_per_worker() -> None:
    c = Chunker(None, workers=2, target=0.5, rounds=True)
    c.observe_time(1000, 1000 * 2e-6)
    assert drain(c, 19_998) == [9999, 9999]


def test_rounds_are_replanned_only_between_rounds() -> None:
    """A measured cost that moves the target by more than half changes the plan, at the next round."""
    c = Chunker(None, workers=2, target=0.25, rounds=True)
    c.observe_time(1, 0.010)
    assert c.next_size(400) == 25  # 16 chunks of 25 planned
    for _ in range(4):
        c.observe_time(25, 25 * 0.001)  # items turn out ten times cheaper
    assert c.next_size(375) == 25  # the round's second chunk keeps its size
    assert c.next_size(350) > 100  # a new round: a new plan from the new cost
