"""The worker process: receive a chunk, run it, send the results back; knows nothing of scheduling.

A worker owns one end of a socket pair and a one-page shared "status" mapping. It writes the id of the chunk it
is running and the offset of the item it runs (and, when the job has a ``task_timeout``, the moment that item
started) into that page, so the parent can tell which item a worker was running when it died or overran, without
any message on the hot path.
Workers ignore SIGINT: Ctrl-C goes to the whole process group, and the parent, not each worker, decides what
an interrupt means (it stops the pool).
"""

from __future__ import annotations

import _socket as socket  # the C module: no enum classes to build at start-up
import functools
import itertools
import mmap
import os
import struct
import sys
import time
from operator import itemgetter, setitem

from . import _channel as ch
from . import _mpstate, _shm
from ._wire import BROADCASTS, dumps, loads, pack_exception, unpicklable_result

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    import pickle
else:  # the C module: pickle.py imports more (enum, re) than a worker needs at start-up
    import _pickle as pickle
if TYPE_CHECKING:
    import signal
else:  # the C module: signal.py imports more (enum, re) than a worker needs at start-up
    import _signal as signal
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

STATUS = struct.Struct(
    "<QQQ"
)  # running chunk id (0 = none), item offset within it, item start (monotonic ns)
STATUS_SIZE = mmap.PAGESIZE
# The worker keeps at most this many task functions; the parent resends one it last sent longer ago than half
# of this (see Worker.needs_function in _scheduler), so an evicted function is never needed.
FUNCTION_CACHE = 1024

# Flag bits. Task frames: b = fn_len << 8 | k << 3 | TOKEN | OUT_OF_BAND | TRACK_ITEMS. TOKEN: the chunk was
# queued behind another, so the parent may take it back for an idle worker; the worker runs it only if it gets
# a token byte from its token pipe first (see Scheduler._steal_locked). k: the status page names blocks of
# 2**k items rather than each item (see run_items).
TRACK_ITEMS, OUT_OF_BAND, TOKEN = 1, 2, 4
BLOCK_SHIFT, FN_SHIFT = 3, 8  # k sits in bits 3-7 (0..31), the function's length above
# RESULT frames: b = PARTIAL (some items carry an error) | OUT_OF_BAND | INPUT_KEPT (the task kept a view
# of its input segment, which the parent must then not reuse) | UNLOADABLE (the chunk's items could not be
# unpickled here: the body is the text of that error, and nothing ran) | NO_FUNCTION (the chunk came without
# its function, which this worker does not have: nothing ran, the parent sends it again with the function).
PARTIAL, INPUT_KEPT, UNLOADABLE, NO_FUNCTION = 1, 4, 8, 16


class _ParentDeathSignal:
    """Ask Linux to SIGKILL this process when its parent dies, so a SIGKILLed parent leaves no orphans.

    ``prepare()`` loads libc through ctypes (several ms) in the process that forks, once, instead of in each
    worker after the fork.
    """

    def __init__(self) -> None:
        self._prctl: Callable[..., int] | None = None

    def prepare(self) -> None:
        if self._prctl is None and sys.platform.startswith("linux"):
            import ctypes

            self._prctl = ctypes.CDLL(None, use_errno=True).prctl

    def __call__(self) -> None:
        self.prepare()
        if self._prctl is not None:
            pr_set_pdeathsig = 1
            self._prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


set_parent_death_signal = _ParentDeathSignal()


_SECOND = itemgetter(1)


def run_items(
    fn: Callable[..., Any],
    items: Iterable[Any],
    star: bool,
    first: int,
    track: Callable[[int], None] | None,
    progress: memoryview | None = None,
    block: int = 1,
) -> tuple[list[Any], dict[int, bytes]]:
    """Apply fn to every item; an item that raises records its error and the others still run.

    ``progress`` (the status page cast to 'Q') gets the running item's offset in its slot 1, so that the parent
    knows which item a worker died on (at most once: that item is never run again). The offset is written by
    C code as each item is pulled, with no Python call per item: ``zip`` pulls the ``setitem`` first, then the
    item, and ``map`` calls fn on it before it pulls the next one, so the page names item k while fn runs on
    item k, never one ahead. Past the last item it reads ``len(items)``.

    That write still costs ~75 ns an item, as much as a cheap item itself (W1). So for items the parent
    measured as cheap it asks for ``block`` > 1: the page gets the first offset of each run of at most
    ``block`` items, written before any of them starts, and the parent counts a worker that dies there as
    dead on one of those items (see Scheduler._recover).
    """
    values: list[Any] = []
    errors: dict[int, bytes] = {}
    it = iter(items)
    if progress is not None and track is None and block > 1:
        return _run_blocks(fn, it, star, first, progress, block)
    if progress is not None and track is None:
        writes = map(setitem, itertools.repeat(progress), itertools.repeat(1), itertools.count())  # type: ignore[arg-type]
        it = map(_SECOND, zip(writes, it))
    while True:
        try:
            if track is not None:
                for x in it:
                    track(len(values))
                    values.append(fn(*x) if star else fn(x))
            elif star:
                values.extend(itertools.starmap(fn, it))
            else:
                # map() appends item by item, so when fn raises, `values` holds exactly the items before it and
                # `it` has moved past the failing one: the loop resumes with the next item.
                values.extend(map(fn, it))
            return values, errors
        except (
            Exception,
            SystemExit,
        ) as exc:  # SystemExit from a task is that item's error, not the worker's
            errors[len(values)] = pack_exception(exc, first + len(values))
            values.append(None)


def _run_blocks(
    fn: Callable[..., Any], it: Any, star: bool, first: int, progress: memoryview, block: int
) -> tuple[list[Any], dict[int, bytes]]:
    """run_items in blocks: the page names the offset before each block of at most ``block`` items.

    After an item raises, the next block starts right after it (the boundaries shift): the parent only relies
    on "the block named by offset s holds items s to s + block - 1 at most", which stays true.
    """
    values: list[Any] = []
    errors: dict[int, bytes] = {}
    apply = itertools.starmap if star else map
    islice = itertools.islice
    while True:
        start = len(values)
        progress[1] = start
        try:
            values.extend(apply(fn, islice(it, block)))
        except (Exception, SystemExit) as exc:  # that item's error, as in run_items
            errors[len(values)] = pack_exception(exc, first + len(values))
            values.append(None)
            continue
        if len(values) - start < block:
            # Past the last item, as run_items: a death while pickling the results is not these items' fault.
            progress[1] = len(values)
            return values, errors


def _pack_values(values: list[Any], errors: dict[int, bytes], first: int) -> tuple[int, bytes]:
    if not errors:
        try:
            return 0, dumps(values)
        except BaseException:  # even SystemExit from a __reduce__: found and reported item by item below
            pass
    # Some value does not pickle (or some item failed): send the good values and an error for each bad one.
    good: list[Any] = []
    for offset, value in enumerate(values):
        if offset in errors:
            good.append(None)
            continue
        try:
            dumps(value)
            good.append(value)
        except BaseException as exc:
            errors[offset] = unpicklable_result(value, first + offset, exc)
            good.append(None)
    return PARTIAL, dumps((good, errors))


# Segments lent to the parent for results, by id, until it sends SEGMENT_FREE; then reused.
_RESULT_SEGMENTS = _shm.SegmentPool(threads=False, exact=True)
_LENT: dict[int, _shm.Segment] = {}


def _pack_results(
    values: list[Any], errors: dict[int, bytes], first: int, threshold: int | None
) -> tuple[int, bytes, _shm.Segment | None]:
    """Pickle results; large buffers go out of band into a segment lent to the parent."""
    if threshold is not None and not errors:
        collector = _shm.Collector(threshold)
        payload = None
        try:  # noqa: SIM105 (no contextlib in workers)
            payload = pickle.dumps(values, protocol=5, buffer_callback=collector)
        except BaseException:
            pass  # e.g. a memoryview, which plain pickle refuses: the wrapped form below handles it
        if payload is None or (
            len(payload) >= threshold and len(values) <= _shm.SCAN_ITEMS and _shm.has_large(values, threshold)
        ):
            # Large bytes went in band (or a memoryview refused plain pickle): send them out of band.
            collector.buffers.clear()
            try:
                payload = pickle.dumps(
                    _shm.wrap_large(values, threshold), protocol=5, buffer_callback=collector
                )
            except BaseException:
                payload = None
        if payload is not None:
            if not collector.buffers:
                return 0, payload, None
            try:
                segment = _RESULT_SEGMENTS.acquire(_shm.layout_size(collector.buffers))
            except OSError as exc:
                # Out of descriptors or mappings (the user's own files count too): the results still
                # travel, in the pickle; the message says which limit, for the worker's stderr.
                sys.stderr.write(f"manycore worker: results sent without shared memory: {exc}\n")
                segment = None
            if segment is not None:
                return OUT_OF_BAND, _shm.pack([payload], collector.buffers, segment), segment
    status, blob = _pack_values(values, errors, first)
    return status, blob, None


class _LoadedBlas:
    """threadpoolctl's controller of the BLAS libraries loaded in the user's process, for workers forked from it.

    Such a worker inherits a BLAS that already runs, with one thread per core: only threadpoolctl can limit it
    there. Importing threadpoolctl and scanning the libraries in each worker wrote to 2.5 MiB of the pages the
    worker shared with the parent (measured with fork, W8's shape), all of it copied; ``prepare()`` runs the
    scan in the parent instead, before each fork (0.3 ms once threadpoolctl is imported), and the worker uses
    the controller it inherits. Workers of the fork server and spawned ones have none: their interpreter
    started with the limits in its environment, so any BLAS it loads obeys them (the scan cost them 0.7 MiB).
    """

    def __init__(self) -> None:
        self.controller: Any = None

    def prepare(self) -> None:
        if "numpy" not in sys.modules:
            return
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return
        self.controller = ThreadpoolController()


loaded_blas = _LoadedBlas()


def _limit_loaded_blas(env: dict[str, str]) -> None:
    """Environment variables only reach BLAS libraries loaded later; a forked worker may have them already."""
    limit = env.get("OMP_NUM_THREADS")
    controller = loaded_blas.controller
    if limit is None or controller is None:
        return
    before = thread_ids()
    controller.limit(limits=int(limit))
    if int(limit) == 1:
        _quiet_restarted_blas_threads(controller.info(), thread_ids() - before)


def thread_ids(pid: int | str = "self") -> set[int]:
    """The ids of a process's threads (Linux /proc); empty where the process is gone or this is not Linux."""
    try:
        return {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return set()


def _quiet_restarted_blas_threads(libraries: list[dict[str, Any]], new_threads: set[int]) -> None:
    """Quiet the thread pool that setting OpenBLAS's thread count starts again in a forked worker.

    OpenBLAS stops its threads before a fork (its atfork handler) and restarts all of them on the next call
    that needs them, and setting the thread count is one (seen with OpenBLAS 0.3.29 to 0.3.34). In a worker
    forked from a parent with numpy loaded, the limit above thus started threads that spin for about 0.1 s
    before they sleep, on the worker's own core: the first tasks after a fork ran at half speed (W8 with
    fork: 58 ms, 30 ms without). With one thread, OpenBLAS runs every call in the caller's thread and never
    uses the pool: it is stopped again where OpenBLAS exports its pre-fork shutdown, and otherwise its threads
    are left to run only on a core nothing else wants (SCHED_IDLE).
    """
    import ctypes

    for library in libraries:
        if library.get("internal_api") != "openblas":
            continue
        try:
            dynlib = ctypes.CDLL(library["filepath"], mode=os.RTLD_NOLOAD)
            shutdown = dynlib.blas_thread_shutdown_
        except (OSError, AttributeError, KeyError):  # not loaded, or a build that does not export it
            continue
        shutdown()
    for tid in new_threads & thread_ids():
        try:  # noqa: SIM105 (no contextlib: workers import as little as they can)
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError):  # gone meanwhile, or not Linux
            pass


def _rss() -> int:
    """This process's private resident memory in bytes (Linux /proc; 0 elsewhere: never a restart).

    Private: resident minus shared pages. Shared memory is not the worker's own (results it lent to the parent
    live in segments for as long as the user keeps them), and neither are the libraries it maps.
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            fields = statm.read().split()
        return (int(fields[1]) - int(fields[2])) * mmap.PAGESIZE
    except OSError:
        return 0


class _Tracker:
    """Writes the running item's offset and start time into the status page (only for jobs with a timeout)."""

    __slots__ = ("chunk_id", "page")

    def __init__(self, page: mmap.mmap, chunk_id: int) -> None:
        self.page = page
        self.chunk_id = chunk_id

    def __call__(self, offset: int) -> None:
        STATUS.pack_into(self.page, 0, self.chunk_id, offset, time.monotonic_ns())


def _unloadable_text(exc: BaseException) -> str:
    """What failed while unpickling a task's function or arguments, with where it failed."""
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class _Unloadable:
    """Stands for a task function that did not unpickle here: every item it is called for fails, saying why."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, *args: object, **kwargs: object) -> None:
        from concurrent.futures.process import BrokenProcessPool

        from .errors import SerializationError

        last = self.text.rstrip().rsplit("\n", 1)[-1]
        raise SerializationError.like(BrokenProcessPool)(
            f"the task function cannot be unpickled in the worker ({last}). Its traceback:\n{self.text}",
            what="function",
            detail=self.text,
        )


# What only this worker may hold, for _let_go_in_child: its socket to the parent and its token pipe's read end.
_OWN: list[Any] = []
_OWN_HOOK: list[bool] = []  # non-empty once this process (or the worker it was forked from) registered it


def _let_go_in_child() -> None:
    """In a child a task (or initializer) forked without exec: close the worker's socket and token pipe.

    The parent learns that a worker died from end-of-file on its socket, which comes only once every copy is
    closed: a child still holding one (close-on-exec needs an exec) would hide a crash, or a task killed for
    ``task_timeout``, for as long as it lived. The status page's descriptor is closed before any user code runs;
    its mapping stays (the worker's frames in this child still write through views of it).
    """
    own = _OWN[:]
    # Cleared first: the hook stays registered in this child, whose own children must not close these
    # numbers again (this process may since have reused them, e.g. for a nested pool's worker).
    _OWN.clear()
    for thing in own:
        try:
            if isinstance(thing, int):
                os.close(thing)
            else:
                thing.close()
        except OSError:  # already closed
            pass


def _take_token(tokens: int) -> bool:
    """Whether this worker may run the chunk it holds: one byte read from its token pipe makes it its own."""
    try:
        return bool(os.read(tokens, 1))
    except (BlockingIOError, OSError):  # BlockingIOError: no token, the parent took it
        return False


def serve(sock: socket.socket, page: mmap.mmap) -> None:
    """The worker loop. Returns when the parent says stop, goes away, or the task budget is spent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reader = ch.FrameReader(sock)
    pending: list[ch.Frame] = []
    init = ch.recv_frame(reader, pending)
    if init is None:
        return
    body = memoryview(init.body)
    meta = loads(body[: init.b])  # (authkey, name, identity, parent name, parent pid, tracker fd, fd count)
    _mpstate.INIT_FDS[:] = [reader.fds.popleft() for _ in range(meta[6])]
    _mpstate.set_identity(meta)
    # The read end of this worker's token pipe came with the init frame (non-blocking: shared with the parent).
    # Taken before the initializer, so that a child the initializer forks lets go of it too.
    tokens = reader.fds.popleft() if reader.fds else -1
    if tokens >= 0:
        _OWN.append(tokens)
    try:
        initializer, initargs, max_tasks, max_memory, threshold, env = loads(body[init.b :])
    except BaseException as exc:  # e.g. an initarg whose class is not importable here: the pool cannot start
        ch.send_frame(sock, ch.INIT_FAILED, 0, os.getpid(), 1, pack_exception(exc, None))
        return
    del body
    if _mpstate.inherited_init is not None:  # forked: initargs (and an unpicklable initializer) inherited
        initializer = initializer or _mpstate.inherited_init[0]
        initargs = _mpstate.inherited_init[1]
    os.environ.update(env)  # e.g. BLAS thread limits, before the initializer or a task imports numpy
    _limit_loaded_blas(env)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            ch.send_frame(sock, ch.INIT_FAILED, 0, os.getpid(), 0, pack_exception(exc, None))
            return
    ch.send_frame(sock, ch.READY, 0, os.getpid(), 0)
    functions: dict[int, Callable[..., Any]] = {}
    done = 0
    progress = memoryview(page).cast("Q")  # run_items writes the running item's offset through it
    while True:
        frame = ch.recv_frame(reader, pending)
        if frame is None or frame.kind == ch.STOP:
            return
        if frame.kind == ch.BROADCAST:
            fd = reader.fds.popleft() if _shm.segment_id(frame.body) else None
            BROADCASTS[frame.chunk_id] = _shm.unpack(memoryview(frame.body), fd, readonly=True)[0]
            continue
        if frame.kind == ch.RELEASE:
            BROADCASTS.pop(frame.chunk_id, None)
            continue
        if frame.kind == ch.SEGMENT_FREE:
            lent = _LENT.pop(frame.chunk_id, None)
            if lent is not None:
                _RESULT_SEGMENTS.release(lent, reusable=True)
            continue
        fn_len, track, oob = frame.b >> FN_SHIFT, frame.b & TRACK_ITEMS, frame.b & OUT_OF_BAND
        body = memoryview(frame.body)
        if fn_len:
            try:
                functions[frame.a] = loads(body[:fn_len])
            except BaseException as exc:  # even SystemExit from a __reduce__: each item's error, not ours
                functions[frame.a] = _Unloadable(_unloadable_text(exc))
            if len(functions) > FUNCTION_CACHE:
                del functions[next(iter(functions))]
        if frame.b & TOKEN and not _take_token(tokens):
            # The parent took this chunk back for an idle worker: it is not ours to run. Say so, so that the
            # parent sends this worker chunks again.
            if oob:
                os.close(reader.fds.popleft())
            ch.send_frame(sock, ch.SKIPPED, frame.chunk_id, 0, 0)
            continue
        fn = functions.get(frame.a)
        if fn is None:
            # The chunk that was to carry the function reached this socket after this one (two parent
            # threads sent them) or never left the parent (its argument did not pickle). The chunk is this
            # worker's (its token, if any, is taken): hand it back unrun rather than die of a KeyError.
            if oob:
                os.close(reader.fds.popleft())
            ch.send_frame(sock, ch.RESULT, frame.chunk_id, 0, NO_FUNCTION, b"")
            continue
        # Written before unpickling, so a worker that dies even there is known to have been on this chunk.
        STATUS.pack_into(page, 0, frame.chunk_id, 0, time.monotonic_ns())
        started = time.perf_counter_ns()
        try:
            if oob:
                (first, data), mapping, views = _shm.unpack(body[fn_len:], reader.fds.popleft())
            else:
                first, data = loads(body[fn_len:])
                reader.recycle(frame.body)  # unpickling copied everything out of it
        except BaseException as exc:
            # Nothing ran: the parent makes this the error of the item that does not unpickle (it sends a
            # chunk of several items again one by one to find it). A failed unpack may have left views of
            # the input segment alive, so the parent must not reuse it.
            STATUS.pack_into(page, 0, 0, 0, 0)
            status = UNLOADABLE | (INPUT_KEPT if oob else 0)
            ch.send_frame(sock, ch.RESULT, frame.chunk_id, 0, status, dumps(_unloadable_text(exc)))
            continue
        tracker = _Tracker(page, frame.chunk_id) if track else None
        if frame.kind == ch.CALL:
            args, kwargs = data[0]
            values, errors = run_items(functools.partial(fn, *args, **kwargs), ((),), True, first, tracker)
            del args, kwargs  # or the call's arguments would live until the next chunk arrives
        else:
            # A one-item chunk needs no tracking: offset 0 was written before unpickling.
            values, errors = run_items(
                fn,
                data,
                frame.kind == ch.STARMAP,
                first,
                tracker,
                progress if len(data) > 1 else None,
                1 << (frame.b >> BLOCK_SHIFT & 31),
            )
        elapsed = time.perf_counter_ns() - started
        if tracker is not None:
            tracker(len(values))  # past the last item: pickling results is not any item's run time
        del data
        status, blob, segment = _pack_results(values, errors, first, threshold)
        del values
        if oob and not _shm.release(mapping, views):
            status |= INPUT_KEPT
        STATUS.pack_into(page, 0, 0, 0, 0)
        ch.send_frame(
            sock,
            ch.RESULT,
            frame.chunk_id,
            elapsed,
            status,
            blob,
            (segment.fd,) if segment is not None else (),
        )
        if segment is not None:
            _LENT[segment.sid] = segment
        done += 1
        if max_tasks and done >= max_tasks:
            return
        if max_memory and _rss() > max_memory:
            # Exit between chunks: the parent re-runs what was queued here and starts a fresh worker.
            return


def run_in_child(sock_fd: int, status_fd: int) -> None:
    """Entry point in a freshly forked or spawned worker: map the status page, serve, exit hard."""
    code = 0
    try:
        # A spawned worker gets both through pass_fds, which makes them inheritable: a program that a task
        # starts without closing descriptors (os.system, close_fds=False) would hold the socket, could write
        # frames the parent unpickles, and would hide this worker's death from the parent while it lived.
        os.set_inheritable(sock_fd, False)
        os.set_inheritable(status_fd, False)
        sock = socket.socket(fileno=sock_fd)
        sock.setblocking(True)
        _OWN[:] = [sock]
        if not _OWN_HOOK:
            # Registered once per process: a worker forked from a worker (a nested fork pool) inherits it.
            _OWN_HOOK.append(True)
            os.register_at_fork(after_in_child=_let_go_in_child)
        page = mmap.mmap(status_fd, STATUS_SIZE)
        os.close(status_fd)
        serve(sock, page)
    except BaseException:
        code = 1
        import traceback

        traceback.print_exc()
    finally:
        # Skip interpreter teardown: atexit handlers and buffers inherited from the parent are not ours to run.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def spawn_main(sock_fd: int, status_fd: int, sys_path: list[str], preload: list[str] | None = None) -> None:
    """Entry point of a worker started as a fresh interpreter (start_method="spawn")."""
    sys.path[:] = sys_path
    set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, from the first moment
    for name in preload or ():
        try:  # noqa: SIM105 (no contextlib: workers import as little as they can)
            __import__(name)
        except Exception:
            pass
    run_in_child(sock_fd, status_fd)
