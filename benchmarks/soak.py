"""Soak run: every kind of call, with faults injected at random, for a bounded time; then check for losses and leaks.

    python benchmarks/soak.py [--minutes 10] [--seed 1] [--workers 2]

Mixes ``map``/``imap``/``imap_unordered`` (``on_error="return"``), ``apply_async`` with callbacks, blocking
``apply``, ``Executor.submit``, pools opened and closed with each start method, and child scripts running a pool
that get Ctrl-C (SIGINT). Faults, drawn from ``--seed``: a worker SIGKILLing itself, a segfault (ctypes), an item
past ``task_timeout``, a result that does not pickle, a task that raises.

Checked: every item's result arrives exactly once with the right value, or its error arrives with the expected
type (``WorkerLostError``, ``TaskTimeoutError``, ``SerializationError``, ``ValueError``); a Ctrl-C'd child exits
within 30 s and leaves none of its processes; after a warm-up, this process's descriptors, threads, child
processes and resident memory are the same at the end as at the start (memory within a slack: the allocator
keeps some). Prints one summary line; exits 1 if anything was lost or leaked.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from collections import Counter
from typing import Any

import psutil

import manycore
from manycore.errors import SerializationError, TaskTimeoutError, WorkerLostError

TIMEOUT = 1.0  # task_timeout of every call; a "timeout" fault sleeps far longer
# Resident growth tolerated: from the warm-up to the end (allocator arenas, caches filling), and over the second
# half of the run alone, where a steady state should be flat and a leak keeps growing.
MEMORY_SLACK = 24 << 20
SECOND_HALF_SLACK = 8 << 20
EXPECTED: dict[str, type[BaseException]] = {
    "kill": WorkerLostError,
    "segv": WorkerLostError,
    "timeout": TaskTimeoutError,
    "unpicklable": SerializationError,
    "raise": ValueError,
}

FAULT_WEIGHTS = {"kill": 3, "segv": 2, "timeout": 1, "unpicklable": 3, "raise": 4}


def task(item: tuple[str, int]) -> Any:
    """What one item does: ``("ok", n)`` returns ``2 * n``; a fault name does that fault."""
    how, n = item
    if how == "ok":
        return 2 * n
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segv":
        ctypes.string_at(0)
    if how == "timeout":
        time.sleep(60)
    if how == "unpicklable":
        return threading.Lock()
    raise ValueError(f"item {n} raised on purpose")


CHILD = textwrap.dedent(
    """
    import os, sys, time, psutil, manycore
    def slow(x):
        time.sleep(60)
        return x
    if __name__ == "__main__":
        with manycore.Pool(2, start_method=sys.argv[1]) as pool:
            result = pool.map_async(slow, range(4), chunksize=1)
            expected = 3 if sys.argv[1] == "forkserver" else 2  # the fork server too
            while len(psutil.Process().children(recursive=True)) < expected:
                time.sleep(0.01)
            time.sleep(0.2)
            pids = [p.pid for p in psutil.Process().children(recursive=True)]
            print(" ".join(map(str, pids)), flush=True)
            result.get()
    """
)


def snapshot() -> dict[str, int]:
    gc.collect()
    me = psutil.Process()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "os_threads": me.num_threads(),
        "children": sum(p.status() != psutil.STATUS_ZOMBIE for p in me.children(recursive=True)),
        "rss": me.memory_info().rss,
    }


class Soak:
    def __init__(self, seed: int, workers: int) -> None:
        self.rng = random.Random(seed)
        self.workers = workers
        self.ops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.items = 0
        self.lost: list[str] = []
        self.pool: manycore.Pool | None = None
        self.verbose = False
        self.script = os.path.join(tempfile.mkdtemp(prefix="manycore-soak-"), "child.py")
        with open(self.script, "w") as f:
            f.write(CHILD)

    # ---- helpers -----------------------------------------------------------------------------------------

    def methods(self) -> list[str]:
        # fork from a threaded process warns on 3.12+ (the supervisor is a thread): skip it there.
        return ["forkserver", "forkserver", "spawn"] + (["fork"] if sys.version_info < (3, 12) else [])

    def open_pool(self) -> manycore.Pool:
        if self.pool is None:
            method = self.rng.choice(self.methods())
            self.pool = manycore.Pool(self.workers, start_method=method, task_timeout=TIMEOUT)
            self.ops[f"pool open ({method})"] += 1
        return self.pool

    def close_pool(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def items_for(self, n: int, fault_rate: float) -> list[tuple[str, int]]:
        items = []
        for i in range(n):
            how = "ok"
            if self.rng.random() < fault_rate:
                # Timeouts cost a second each and kills a respawn: rarer than the cheap faults.
                how = self.rng.choices(list(FAULT_WEIGHTS), weights=list(FAULT_WEIGHTS.values()))[0]
                self.faults[how] += 1
            items.append((how, i))
        self.items += n
        return items

    def check(self, what: str, item: tuple[str, int], got: Any, error: BaseException | None = None) -> None:
        how, n = item
        if how == "ok":
            if error is not None or got != 2 * n:
                self.lost.append(f"{what}: item {n} gave {error or got!r}, expected {2 * n}")
        else:
            value = error if error is not None else got
            if not isinstance(value, EXPECTED[how]):
                self.lost.append(f"{what}: {how} item {n} gave {value!r}, expected {EXPECTED[how].__name__}")

    # ---- operations --------------------------------------------------------------------------------------

    def op_map(self) -> None:
        items = self.items_for(self.rng.randint(10, 120), 0.03)
        out = self.open_pool().map(task, items, on_error="return")
        if len(out) != len(items):
            self.lost.append(f"map: {len(out)} results for {len(items)} items")
        for item, got in zip(items, out):
            self.check("map", item, got)

    def op_imap(self) -> None:
        items = self.items_for(self.rng.randint(10, 120), 0.03)
        unordered = self.rng.random() < 0.5
        pool = self.open_pool()
        call = pool.imap_unordered if unordered else pool.imap
        out = list(call(task, iter(items), chunksize=self.rng.choice([1, 4, "auto"]), on_error="return"))
        if len(out) != len(items):
            self.lost.append(f"imap: {len(out)} results for {len(items)} items")
        if unordered:  # values of ok items exactly once; errors counted by type
            got = Counter(v for v in out if not isinstance(v, BaseException))
            want = Counter(2 * n for how, n in items if how == "ok")
            if got != want:
                self.lost.append(f"imap_unordered: values differ: missing {want - got}, extra {got - want}")
            # By the expected class each error is an instance of: a SerializationError is also an instance of
            # what the standard library raises there (its class is then e.g. SerializationError[TypeError]).
            kinds = sorted(set(EXPECTED.values()), key=lambda c: c is ValueError)  # manycore's own first
            errors = Counter(
                next((c.__name__ for c in kinds if isinstance(v, c)), type(v).__name__)
                for v in out
                if isinstance(v, BaseException)
            )
            want_errors = Counter(EXPECTED[how].__name__ for how, _ in items if how != "ok")
            if errors != want_errors:
                self.lost.append(f"imap_unordered: errors {dict(errors)}, expected {dict(want_errors)}")
        else:
            for item, got in zip(items, out):
                self.check("imap", item, got)

    def op_apply_async(self) -> None:
        items = self.items_for(self.rng.randint(2, 12), 0.1)
        calls: Counter[int] = Counter()
        outcome: dict[int, tuple[Any, BaseException | None]] = {}
        lock = threading.Lock()
        done = threading.Semaphore(0)

        def on(n: int, value: Any, error: BaseException | None) -> None:
            with lock:
                calls[n] += 1
                outcome[n] = (value, error)
            done.release()

        pool = self.open_pool()
        for how, n in items:
            pool.apply_async(
                task,
                ((how, n),),
                callback=lambda v, n=n: on(n, v, None),
                error_callback=lambda e, n=n: on(n, None, e),
            )
        for _ in items:
            if not done.acquire(timeout=120):
                self.lost.append("apply_async: a callback never came (120 s)")
                return
        time.sleep(0.01)  # a duplicate callback would come now
        for item in items:
            if calls[item[1]] != 1:
                self.lost.append(f"apply_async: item {item[1]} called back {calls[item[1]]} times")
            else:
                self.check("apply_async", item, *outcome[item[1]])

    def op_apply(self) -> None:
        (item,) = self.items_for(1, 0.2)
        try:
            got, error = self.open_pool().apply(task, (item,)), None
        except Exception as exc:
            got, error = None, exc
        self.check("apply", item, got, error)

    def op_executor(self) -> None:
        items = self.items_for(self.rng.randint(2, 20), 0.08)
        with manycore.Executor(self.workers, task_timeout=TIMEOUT) as ex:
            futures = [ex.submit(task, item) for item in items]
            for item, fut in zip(items, futures):
                error = fut.exception(120)
                self.check("executor", item, None if error else fut.result(), error)

    def op_sigint_child(self) -> None:
        method = self.rng.choice(["forkserver", "spawn"])
        self.faults["sigint"] += 1
        proc = subprocess.Popen(
            [sys.executable, self.script, method], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            pids = [int(p) for p in line.split()]
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                self.lost.append(f"sigint child ({method}): still running 30 s after Ctrl-C")
                return
            deadline = time.monotonic() + 5
            alive = pids
            while alive and time.monotonic() < deadline:
                alive = [p for p in pids if _alive(p)]
                time.sleep(0.05)
            if not pids or alive:
                self.lost.append(f"sigint child ({method}): processes {alive or 'unknown'} left after Ctrl-C")
        finally:
            proc.kill()
            proc.communicate()

    def op_restart(self) -> None:
        self.close_pool()
        self.open_pool()

    # ---- the run -----------------------------------------------------------------------------------------

    def step(self) -> None:
        ops = [
            (self.op_map, 25),
            (self.op_imap, 20),
            (self.op_apply_async, 20),
            (self.op_apply, 15),
            (self.op_executor, 8),
            (self.op_restart, 6),
            (self.op_sigint_child, 3),
        ]
        op = self.rng.choices([o for o, _ in ops], weights=[w for _, w in ops])[0]
        if self.verbose:
            print(
                f"{time.strftime('%H:%M:%S')} {op.__name__} pool={self.pool!r}", file=sys.stderr, flush=True
            )
        op()
        self.ops[op.__name__[3:]] += 1


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="print each operation on stderr")
    parser.add_argument(
        "--hang-dump", type=float, default=0, help="dump all threads' stacks after this many s"
    )
    args = parser.parse_args()
    if args.hang_dump:
        import faulthandler

        faulthandler.dump_traceback_later(args.hang_dump, exit=True)
    warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, on the Pythons that warn
    soak = Soak(args.seed, args.workers)
    soak.verbose = args.verbose
    try:
        return run(soak, args.minutes, args.seed)
    finally:
        shutil.rmtree(os.path.dirname(soak.script), ignore_errors=True)  # the Ctrl-C children's script


def run(soak: Soak, minutes: float, seed: int) -> int:
    """The timed run and its report; 1 if anything was lost or leaked."""
    total = minutes * 60
    warmup = min(30.0, total / 10)
    start = time.monotonic()
    while time.monotonic() - start < warmup:
        soak.step()
    soak.close_pool()
    before = snapshot()
    while time.monotonic() - start < warmup + (total - warmup) / 2:
        soak.step()
    soak.close_pool()
    middle = snapshot()
    while time.monotonic() - start < total:
        soak.step()
    soak.close_pool()
    time.sleep(0.5)  # workers of the last pool finish exiting
    after = snapshot()
    leaks = [
        f"{key} {before[key]} -> {after[key]}"
        for key in ("fds", "threads", "os_threads", "children")
        if after[key] > before[key]
    ]
    if after["rss"] - before["rss"] > MEMORY_SLACK or after["rss"] - middle["rss"] > SECOND_HALF_SLACK:
        leaks.append(f"rss {before['rss'] >> 20} -> {middle['rss'] >> 20} -> {after['rss'] >> 20} MiB")
    operations = sum(v for k, v in soak.ops.items() if not k.startswith("pool open"))
    faults = sum(soak.faults.values())
    print(
        f"soak {minutes:g} min seed {seed} python {sys.version.split()[0]}: "
        f"operations {operations} ({', '.join(f'{k} {v}' for k, v in sorted(soak.ops.items()))}), "
        f"items {soak.items}, "
        f"faults injected {faults} ({', '.join(f'{k} {v}' for k, v in sorted(soak.faults.items()))}), "
        f"lost: {len(soak.lost)}, leaks: {'; '.join(leaks) or 'none'} "
        f"(after warm-up, middle, end: rss {before['rss'] >> 20} -> {middle['rss'] >> 20} -> "
        f"{after['rss'] >> 20} MiB, fds {before['fds']} -> {after['fds']}, "
        f"threads {before['os_threads']} -> {after['os_threads']})"
    )
    for problem in soak.lost[:20]:
        print("  lost:", problem)
    return 1 if soak.lost or leaks else 0


if __name__ == "__main__":
    sys.exit(main())
