"""Running jobs on an execution engine that manycore does not own: threads, Dask, Ray.

``EngineScheduler`` keeps every job semantic of the process pool (ordered map, lazy imap with a bounded window,
automatic chunking, ``on_error``, ``retries``, progress bars, remote tracebacks) and hands each chunk to the
engine as one task, ``run_chunk(fn, kind, first, items)``. At most ``DEPTH x slots`` chunks are in the engine
at once, which is what keeps imap lazy and memory flat there too.

Chunks matter even more on these engines than locally: a Dask or Ray task costs milliseconds of scheduling,
so one task per item (plain ``client.map``) drowns tiny items in overhead.

What an engine cannot do is refused with a clear error rather than ignored, from the capabilities it declares
(``manycore.backends``): threads and Dask cannot stop a running task, so ``task_timeout`` is refused there,
when the pool is built or the call is made.

A worker lost on an engine does not say which task killed it: Dask, for one, blames every task that was
queued on that worker. So the items of a lost chunk become suspects, and each suspect is re-run alone, with
nothing else in the engine; a suspect whose worker dies while it runs alone is the culprit. That costs some
parallelism, only after a crash, and is what lets the culprit fail alone while every other item succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import _channel as ch
from ._jobs import Chunk, Job, SchedulerBase, State
from ._recovery import lost_chunk
from ._serialize import unpack_exception
from ._waiting import Latch
from ._worker._run import run_items
from .backends._base import Backend
from .errors import PoolClosedError, WorkerLostError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._launch import Launcher
    from ._options import PoolOptions

DEPTH = 2


def run_chunk(
    fn: Callable[..., Any], kind: int, first: int, items: list[Any]
) -> tuple[list[Any], dict[int, bytes], float]:
    """One chunk, on whatever runs it: (values, per-item errors pickled with their traceback text, seconds).

    The seconds are the chunk's compute time where it ran, which sizes the job's next automatic chunks
    without the engine's scheduling and transfer delays.
    """
    started = time.perf_counter()
    if kind == ch.CALL:
        args, kwargs = items[0]
        values, errors = run_items(lambda _: fn(*args, **kwargs), (None,), False, first, None)
    else:
        values, errors = run_items(fn, items, kind == ch.STARMAP, first, None)
    return values, errors, time.perf_counter() - started


class Engine(Backend):
    """A backend whose chunks run on an engine manycore does not own: what ``EngineScheduler`` needs from it.

    Subclasses live in ``manycore.backends`` (one module each); they declare their ``capabilities``.
    """

    name = "engine"
    slots = 1  # tasks that can run at once
    # Seconds of work per automatic chunk. A Dask or Ray task costs milliseconds of the driver's CPU, and
    # of the cores the work runs on, so chunks there carry ten times the work of a local one (on Ray, W2 with
    # 0.25 s chunks took 12 calls and ran 1% slower than with 0.5 s ones, 6 calls); threads cost almost
    # nothing per chunk.
    chunk_seconds = 0.5
    # Whether a sized input goes in equal rounds of chunks (see _chunking): where calls cost milliseconds,
    # fewer of them beats the finely split tail that absorbs imbalance locally.
    chunk_rounds = True

    def scheduler(self, options: PoolOptions, prelaunched: Launcher | None = None) -> EngineScheduler:
        return EngineScheduler(self)  # an engine prelaunches nothing (Backend.prelaunch)

    def start(self) -> None:
        """Connect or start; called once by the scheduler."""

    def run(self, chunk: Chunk, done: Callable[[Chunk, Any, BaseException | None], None]) -> None:
        """Run ``run_chunk`` for the chunk; call ``done(chunk, result, error)`` from any thread when finished."""
        raise NotImplementedError

    def is_worker_lost(self, exc: BaseException) -> bool:
        """Whether an error means the engine's worker died running the chunk (then it is re-run, like locally)."""
        return False

    def broadcast(self, obj: object) -> Any:
        raise NotImplementedError(f"broadcast is not available on the {self.name} backend")

    def close(self) -> None:
        """Release what ``start`` acquired; never shuts down a cluster the user created."""


class EngineScheduler(SchedulerBase):
    """The scheduler for external engines: same jobs and semantics, chunks run by ``engine.run``."""

    def __init__(self, engine: Engine) -> None:
        engine.start()  # first: Dask and Ray learn their slots from the cluster there
        super().__init__(engine.slots)
        self.start_method = engine.name
        self.chunk_seconds = engine.chunk_seconds
        # An engine without rounds (threads) splits its tail no finer than a quarter of its chunks: a chunk
        # costs more to schedule on any engine than on manycore's own workers.
        self.tail_seconds = engine.chunk_seconds / 4
        self.chunk_rounds = engine.chunk_rounds
        self._engine = engine
        self._inflight = 0
        self._suspects: list[Chunk] = []  # items of lost chunks, to be re-run one at a time
        self._isolated: Chunk | None = None  # the suspect running alone now
        self._stopped = Latch()

    # ---- dispatch ----------------------------------------------------------------------------------------

    def _assign_locked(self) -> list[Chunk]:
        out: list[Chunk] = []
        if self.state is State.TERMINATED:
            return out
        if self._suspects:
            if self._inflight == 0:  # drained: run the next suspect alone
                self._isolated = self._suspects.pop(0)
                self._inflight = 1
                out.append(self._isolated)
            return out
        while self._inflight < DEPTH * self.processes:
            if self._inflight >= self.processes and self._probing_locked():
                # One probe per slot until a cost is measured: a second would be one more call of a single
                # item, milliseconds of overhead on Dask or Ray, and the first result sizes every chunk after.
                break
            chunk = self._next_chunk_locked()
            if chunk is None:
                break
            self._inflight += 1
            out.append(chunk)
        return out

    def _probing_locked(self) -> bool:
        return not self._retry and bool(self._dispatchable) and self._dispatchable[0].probing_locked()

    def _send(self, assignments: list[Chunk]) -> None:
        for chunk in assignments:
            try:
                self._engine.run(chunk, self._done)
            except Exception as exc:  # e.g. an argument the engine cannot serialize
                self._done(chunk, None, exc)

    def _done(self, chunk: Chunk, result: Any, error: BaseException | None) -> None:
        job = chunk.job
        requeue: list[Chunk] = []
        suspects: list[Chunk] = []
        if error is None:
            values, packed, seconds = result
            job.chunker.observe_time(len(chunk.items), seconds)
            if not job.closed:
                job.deliver(chunk, values, {k: unpack_exception(v) for k, v in packed.items()})
        elif self._engine.is_worker_lost(error) and not job.closed:
            if chunk is not self._isolated:
                suspects = chunk.solos()  # it may have been the victim of another task: re-run alone
            else:  # the suspect, alone: retried, or it fails (see _recovery)
                requeue, failed, _ = lost_chunk(chunk, 0, 1)
                for culprit in failed:
                    index = culprit.first
                    lost = WorkerLostError(
                        f"the {self._engine.name} worker running item #{index} died ({error})", index=index
                    )
                    lost.__cause__ = error
                    job.deliver(culprit, [None], {0: lost})
        elif not job.closed:
            job.deliver(chunk, [None] * len(chunk.items), dict.fromkeys(range(len(chunk.items)), error))
        with self._lock:
            self._inflight -= 1
            if chunk is self._isolated:
                self._isolated = None
            self._suspects.extend(suspects)
            self._retry.extendleft(reversed(requeue))
            assignments = self._assign_locked()
            finished = self.state is State.CLOSED and self._idle_locked()
        self._send(assignments)
        if finished:
            self._stop()

    def _idle_locked(self) -> bool:
        return self._active == 0 and self._inflight == 0 and not self._retry and not self._suspects

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def close(self) -> None:
        super().close()
        with self._lock:
            finished = self._idle_locked()
        if finished:
            self._stop()

    def job_finished(self, job: Job) -> None:
        super().job_finished(job)
        if self.state is State.CLOSED:
            with self._lock:
                finished = self._idle_locked()
            if finished:
                self._stop()

    def _stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._engine.close()

    def join(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def terminate(self) -> None:
        with self._lock:
            jobs = self._terminate_locked()
        if jobs is not None:
            self._fail_unfinished(jobs)
            self._stop()

    def broadcast(self, obj: object) -> Any:
        with self._lock:
            if self.state is not State.RUNNING:
                raise PoolClosedError("Pool not running: it was closed or terminated; create a new one")
        return self._engine.broadcast(obj)

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {
                "workers": self.processes,
                "chunks_in_flight": self._inflight,
                "jobs_active": self._active,
            }
