"""The ``ray`` backend: chunks run on long-lived Ray actors, one per CPU of the cluster."""

from __future__ import annotations

import concurrent.futures
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from .._engine import Engine, run_chunk
from .._jobs import Chunk
from .._options import PoolOptions
from ._base import Capabilities
from ._shared import failed_chunk, initialize, substitute


class Ray(Engine):
    """A Ray runtime: the connected one (``ray.init(...)`` done by the user), or one at ``address``.

    Chunks run on long-lived Ray actors, one per CPU of the cluster when the pool starts, each reserving its
    CPU (``num_cpus=1``) until the pool closes: a second pool open at the same time, or other Ray work, waits
    for the CPUs this one holds. A chunk goes to the actor with the fewest items outstanding, among those
    already running; an actor still waiting for a CPU gets none (chunks wait for the first actor to come up),
    so a pool that gets fewer CPUs than it asked for still finishes its work on those it has.

    ``initializer(*initargs)`` (given here, or as ``Pool(initializer=..., backend="ray")``) runs once in
    each actor, as in a local worker process; if it raises, the tasks sent to that actor fail with
    ``InitializerError``. ``broadcast`` uses ``ray.put``. An actor whose process dies (``os._exit``, a
    signal, its node lost) is replaced by a new one, and the items it held are handled as locally: re-run,
    and the culprit alone fails with ``WorkerLostError``. Not supported, and refused: ``task_timeout`` and
    ``maxtasksperchild``. Closing the pool kills its actors; it shuts Ray down only if the pool started it
    (``address=...`` with no runtime connected).
    """

    name = "ray"
    capabilities = Capabilities(initializer=True, broadcast=True, lost_workers=True)

    def __init__(
        self,
        address: str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self._address = address
        self._initializer = initializer
        self._initargs = initargs
        self._started = False
        self._actor_class: Any = None
        self._lock = threading.Lock()
        self._actors: list[_RayActor] = []
        self._closed = False
        # Finished calls and actors that came up (or failed to), handled on a thread of ours: Ray runs future
        # callbacks on its I/O thread, where ray.kill (replacing a dead actor, closing the pool) blocks
        # forever, and where the scheduler's work would hold up every other reply.
        self._finished: queue.SimpleQueue[
            tuple[_RayCall | _RayActor, concurrent.futures.Future[Any]] | None
        ] = queue.SimpleQueue()
        # Chunks that came while no actor was running yet, sent when the first one is up.
        self._held: list[tuple[Chunk, Callable[[Chunk, Any, BaseException | None], None]]] = []

    @classmethod
    def from_options(cls, options: PoolOptions) -> Ray:
        return cls(initializer=options.initializer, initargs=options.initargs)

    def start(self) -> None:
        import ray

        if not ray.is_initialized():
            if self._address is None:
                raise RuntimeError(
                    "backend='ray' needs a Ray runtime, and none is connected. Call ray.init() (or "
                    "ray.init(address='ray://head:10001') for a cluster) first, or pass "
                    "backend=manycore.backends.Ray(address=...)."
                )
            ray.init(address=self._address)
            self._started = True
        # All the cluster's CPUs, not just those free now: Ray holds a finished task's CPU for a moment (to
        # reuse its worker), so work done just before would shrink the pool for its whole life. Actors that
        # find no free CPU wait for one, and get chunks once they run.
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        # max_restarts=0: Ray fails calls sent to an actor that is restarting, which would blame the item
        # being re-run alone for a crash it did not cause; a new actor, made here, queues them instead.
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_RayWorker)
        self._actors = [self._new_actor() for _ in range(self.slots)]
        threading.Thread(target=self._dispatch, name="manycore-ray", daemon=True).start()

    def _new_actor(self) -> _RayActor:
        entry = _RayActor(self._actor_class.remote(self._initializer, self._initargs))
        entry.handle.__ray_ready__.remote().future().add_done_callback(
            lambda future: self._finished.put((entry, future))
        )
        return entry

    def run(self, chunk: Chunk, done: Callable[[Chunk, Any, BaseException | None], None]) -> None:
        job = chunk.job
        # Looking for handles costs as much as pickling the items: only once some broadcast exists.
        resolve = RayHandle.made
        items = substitute(list(chunk.items), _ref, RayHandle) if resolve else chunk.items
        with self._lock:
            if self._closed:
                raise RuntimeError("the Ray engine is closed")
            # Only actors that run get chunks: one that waits for a CPU may wait forever (a CPU that other
            # work holds, a cluster that shrank), and a chunk queued on it would never come back. Until
            # the first actor is up, chunks wait here; if none comes up, they go to the actors anyway and
            # fail there as lost workers, which is reported per item.
            running = [entry for entry in self._actors if entry.ready]
            if not running:
                if not all(entry.started for entry in self._actors):
                    self._held.append((chunk, done))
                    return
                running = self._actors
            # An actor runs its calls one after the other: the one with the fewest items outstanding starts
            # this chunk soonest. Items, not calls: an actor running a 1-item probe is nearly free, and one
            # given a whole round's chunk is not (by calls, both would get the next chunk).
            entry = min(running, key=_load)
            entry.load += len(items)
        try:
            ref = entry.handle.run.remote(job.fn, job.kind, chunk.first, items, resolve)
        except BaseException:
            with self._lock:
                entry.load -= len(items)
            raise
        call = _RayCall(chunk, done, entry)
        ref.future().add_done_callback(lambda future: self._finished.put((call, future)))

    def _dispatch(self) -> None:
        while (finished := self._finished.get()) is not None:
            subject, future = finished
            if isinstance(subject, _RayActor):
                self._actor_started(subject, future)
                continue
            call = subject
            error = future.exception()
            lost = error is not None and self.is_worker_lost(error)
            replaced: _RayActor | None = None
            with self._lock:
                if self._closed:
                    continue
                call.actor.load -= len(call.chunk.items)
                if lost and call.actor in self._actors:
                    replaced = call.actor
                    self._actors[self._actors.index(replaced)] = self._new_actor()
            if replaced is not None:
                import ray

                # Killed even if only unreachable: a half-alive actor would keep the CPU the new one needs.
                ray.kill(replaced.handle, no_restart=True)
            try:
                call.done(call.chunk, None if error is not None else future.result(), error)
            except Exception:
                # Reported, not fatal: this thread hands over every other result of the pool.
                print("manycore: handling a Ray result failed:", file=sys.stderr)
                traceback.print_exc()

    def _actor_started(self, entry: _RayActor, future: concurrent.futures.Future[Any]) -> None:
        """An actor came up (or failed to): send the chunks held while none was running."""
        with self._lock:
            entry.started = True
            entry.ready = future.exception() is None
            if self._closed or not (entry.ready or all(actor.started for actor in self._actors)):
                return
            held, self._held = self._held, []
        for chunk, done in held:
            try:
                self.run(chunk, done)
            except Exception as exc:  # closed meanwhile, or arguments Ray cannot serialize
                done(chunk, None, exc)

    def is_worker_lost(self, exc: BaseException) -> bool:
        import ray.exceptions

        # RayActorError covers ActorDiedError and ActorUnavailableError: the actor's process or node is gone.
        return isinstance(
            exc,
            (
                ray.exceptions.RayActorError,
                ray.exceptions.WorkerCrashedError,
                ray.exceptions.NodeDiedError,
                ray.exceptions.OutOfMemoryError,
            ),
        )

    def broadcast(self, obj: object) -> RayHandle:
        import ray

        return RayHandle(ray.put(obj))

    def close(self) -> None:
        import ray

        with self._lock:
            self._closed = True
            actors, self._actors = self._actors, []
        self._finished.put(None)
        if self._started:
            ray.shutdown()
        elif ray.is_initialized():
            for entry in actors:
                ray.kill(entry.handle, no_restart=True)


class _RayActor:
    """One of a Ray pool's actors: its handle, its items outstanding, whether it has come up (or failed to)."""

    __slots__ = ("handle", "load", "ready", "started")

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.load = 0
        self.ready = False  # running: it takes chunks
        self.started = False  # Ray has said whether it came up


def _load(entry: _RayActor) -> int:
    return entry.load


def _ref(handle: RayHandle) -> Any:
    return handle.ref


class _RayCall:
    """One chunk sent to an actor, until the dispatcher has handled its result."""

    __slots__ = ("actor", "chunk", "done")

    def __init__(
        self, chunk: Chunk, done: Callable[[Chunk, Any, BaseException | None], None], actor: _RayActor
    ) -> None:
        self.chunk = chunk
        self.done = done
        self.actor = actor


class RayHandle:
    """``Pool.broadcast`` on Ray: the object is in Ray's object store once; tasks receive the object."""

    made = False  # whether any handle was ever made in this process: chunks need searching for them

    def __init__(self, ref: Any) -> None:
        self.ref = ref
        RayHandle.made = True

    def release(self) -> None:
        self.ref = None  # Ray frees the object once no reference to it is left


class _RayWorker:
    """The actor behind each of a Ray pool's slots (made remote in ``Ray.start``)."""

    def __init__(self, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
        # Kept, not raised: an actor whose constructor raises is dead, and its calls would fail as lost
        # workers; this way each task reports the initializer's error instead.
        self._init_error = initialize(initializer, initargs, "a Ray worker")

    def run(self, fn: Callable[..., Any], kind: int, first: int, items: list[Any], resolve: bool) -> Any:
        if self._init_error is not None:
            return failed_chunk(self._init_error, first, len(items))
        if resolve:
            import ray

            # Ray resolves object refs only at the top level of arguments; broadcast handles sit inside items.
            items = substitute(items, ray.get, ray.ObjectRef)
        return run_chunk(fn, kind, first, items)
