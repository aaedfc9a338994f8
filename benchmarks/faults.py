#!/usr/bin/env python3
"""What happens when a worker process misbehaves? Each fault, in each library, in a fresh process.

    python benchmarks/faults.py [--libs manycore,mp,...] [--faults sigkill,segfault,...] [--hang 20]
                                [--jobs 3] [--json PATH]

Libraries: manycore (Pool.map), multiprocessing.Pool (imap), concurrent.futures.ProcessPoolExecutor (submit),
joblib (loky backend, Parallel), mpire (WorkerPool.map), pebble (ProcessPool.schedule). Each library is used
the way its documentation suggests for "apply f to 10 items on 2 workers and get what succeeded", so the
per-item APIs (imap, submit, schedule) can report partial results and the all-or-nothing ones cannot.

Every (library, fault) case runs in its own process group with a hard time limit: a case that has not finished
by then is recorded as HANG and its whole process group is SIGKILLed. Item 3 of 10 is the faulty one; the other
items sleep 50 ms and return x*x. After a case the harness checks that none of the processes the case started
is still alive 2 s later ("N processes left behind").

Ctrl-C is a real one: SIGINT to the case's whole process group (as a terminal does) while both workers are
blocked in a task, then the time until KeyboardInterrupt reaches the script and until the script has exited.

Needs psutil in the running interpreter; the peers where installed (see benchmarks/README.md). manycore is
imported from the repository's src/ when it is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
SRC_DIR = os.path.join(os.path.dirname(BENCH_DIR), "src")
try:
    import manycore  # noqa: F401
except ImportError:
    sys.path.insert(0, SRC_DIR)

N = 10  # items per case
BAD = 3  # the faulty item
TIMEOUT = 1.0  # per-task timeout, where a library has one
TAG = "FAULTS-RESULT "

LIBS = {
    "manycore": "manycore",
    "mp": "multiprocessing.Pool",
    "cf": "ProcessPoolExecutor",
    "joblib": "joblib (loky)",
    "mpire": "mpire",
    "pebble": "pebble",
}
FAULTS = {
    "sigkill": "worker SIGKILLed mid-task (e.g. OOM killer)",
    "segfault": "segfault in a task",
    "exit": "`os._exit(3)` in a task",
    "timeout": "task runs past a timeout (1 s)",
    "bad_result": "result cannot be pickled",
    "bad_exception": "exception cannot be pickled",
    "unloadable_exception": "exception cannot be unpickled in the parent",
    "ctrl_c": "Ctrl-C during a map",
}


# ---- the tasks (module level: every library can send them) ------------------------------------------------------


class UnpicklableError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class UnloadableError(Exception):
    """Pickles, but unpickling calls UnloadableError(message) without `code`: fails in the parent."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code


def task(fault: str, x: int) -> Any:
    if x == BAD:
        if fault == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == "segfault":
            ctypes.string_at(0)
        elif fault == "exit":
            os._exit(3)
        elif fault == "timeout":
            time.sleep(1000)
        elif fault == "bad_result":
            return threading.Lock()
        elif fault == "bad_exception":
            raise UnpicklableError("item 3 failed")
        elif fault == "unloadable_exception":
            raise UnloadableError("item 3 failed", 7)
    time.sleep(0.05)
    return x * x


def block(x: int) -> int:
    time.sleep(1000)
    return x


# ---- running one fault in one library (inside the case process) -------------------------------------------------

Outcome = tuple[
    list[Any], BaseException | None
]  # per-item values/exceptions, or the error that lost them all


def per_item(getters: list[Callable[[], Any]]) -> list[Any]:
    out: list[Any] = []
    for get in getters:
        try:
            out.append(get())
        except Exception as exc:
            out.append(exc)
    return out


def run_manycore(fn: Callable[[int], Any], timeout: float | None) -> Outcome:
    import manycore

    with manycore.Pool(2) as pool:
        return pool.map(fn, range(N), on_error="return", task_timeout=timeout), None


def run_mp(fn: Callable[[int], Any], timeout: float | None) -> Outcome:
    import multiprocessing

    with multiprocessing.Pool(2) as pool:
        # imap goes on after an item raises, so each item's own outcome is visible.
        it = pool.imap(fn, range(N))
        return per_item([it.__next__] * N), None


def run_cf(fn: Callable[[int], Any], timeout: float | None) -> Outcome:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as ex:
        futures = [ex.submit(fn, x) for x in range(N)]
        return per_item([f.result for f in futures]), None


def run_joblib(fn: Callable[[int], Any], timeout: float | None) -> Outcome:
    from joblib import Parallel, delayed

    try:
        return Parallel(n_jobs=2, timeout=timeout)(delayed(fn)(x) for x in range(N)), None
    except Exception as exc:
        return [], exc


def run_mpire(fn: Callable[[int], Any], timeout: float | None) -> Outcome:
    from mpire import WorkerPool

    try:
        with WorkerPool(n_jobs=2) as pool:
            return pool.map(fn, range(N), task_timeout=timeout), None
    except Exception as exc:
        return [], exc


def run_pebble(fn: Callable[[int], Any], timeout: float | None) -> Outcome:
    from pebble import ProcessPool

    with ProcessPool(max_workers=2) as pool:
        futures = [pool.schedule(fn, args=(x,), timeout=timeout) for x in range(N)]
        return per_item([f.result for f in futures]), None


RUNNERS = {
    "manycore": run_manycore,
    "mp": run_mp,
    "cf": run_cf,
    "joblib": run_joblib,
    "mpire": run_mpire,
    "pebble": run_pebble,
}
NO_TIMEOUT = {"mp", "cf"}  # no per-task timeout in the library


def describe_error(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {text[:100]}" if text else name


def case_fault(lib: str, fault: str) -> dict[str, Any]:
    if fault == "timeout" and lib in NO_TIMEOUT:
        return {"unsupported": True}
    fn = partial(task, fault)
    start = time.monotonic()
    values, lost = RUNNERS[lib](fn, TIMEOUT if fault == "timeout" else None)
    elapsed = time.monotonic() - start
    if lost is not None:
        return {"lost": describe_error(lost), "elapsed": elapsed}
    ok = sum(1 for x, v in enumerate(values) if not isinstance(v, BaseException) and v == x * x)
    errors = {x: describe_error(v) for x, v in enumerate(values) if isinstance(v, BaseException)}
    bad_value = None if BAD in errors or len(values) <= BAD else repr(values[BAD])[:60]
    return {"ok": ok, "n": len(values), "errors": errors, "bad_value": bad_value, "elapsed": elapsed}


def case_ctrl_c(lib: str) -> None:
    """Block both workers, tell the harness, and wait for its Ctrl-C."""

    def ready() -> None:
        time.sleep(1.0)  # let both workers start their task
        print(TAG + json.dumps({"ready": True}), flush=True)

    threading.Thread(target=ready, daemon=True).start()
    try:
        if lib == "manycore":
            import manycore

            with manycore.Pool(2) as pool:
                pool.map(block, range(4), chunksize=1)
        elif lib == "mp":
            import multiprocessing

            with multiprocessing.Pool(2) as pool:
                pool.map(block, range(4), chunksize=1)
        elif lib == "cf":
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(2) as ex:
                list(ex.map(block, range(4)))
        elif lib == "joblib":
            from joblib import Parallel, delayed

            Parallel(n_jobs=2)(delayed(block)(x) for x in range(4))
        elif lib == "mpire":
            from mpire import WorkerPool

            with WorkerPool(n_jobs=2) as pool:
                pool.map(block, range(4))
        elif lib == "pebble":
            from pebble import ProcessPool

            with ProcessPool(max_workers=2) as pool:
                list(pool.map(block, range(4)).result())
    except KeyboardInterrupt:
        print(TAG + json.dumps({"interrupted": time.monotonic()}), flush=True)
        return
    except BaseException as exc:
        print(TAG + json.dumps({"other": describe_error(exc), "at": time.monotonic()}), flush=True)
        return
    print(TAG + json.dumps({"finished": True}), flush=True)


def case_main(lib: str, fault: str) -> None:
    # A script started from a terminal has Python's SIGINT handler even when the harness itself was started
    # in the background (which leaves SIGINT ignored in its children).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if fault == "ctrl_c":
        case_ctrl_c(lib)
        return
    try:
        result = case_fault(lib, fault)
    except BaseException as exc:  # the harness reports it; keep the process exit clean
        result = {"lost": describe_error(exc), "elapsed": None}
    print(TAG + json.dumps(result), flush=True)


# ---- the harness ------------------------------------------------------------------------------------------------------


class Watcher(threading.Thread):
    """Remembers every descendant of a process while it runs, to find the ones that outlive it."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.seen: dict[int, Any] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.snapshot()
            self.stop.wait(0.05)

    def snapshot(self) -> list[Any]:
        try:
            kids = self.root.children(recursive=True)
        except self.psutil.Error:
            return []
        for p in kids:
            self.seen.setdefault(p.pid, p)
        return kids

    def alive(self) -> list[Any]:
        out = []
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != self.psutil.STATUS_ZOMBIE:
                    out.append(p)
            except self.psutil.Error:
                pass
        return out

    def wait_gone(self, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            alive = self.alive()
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.05)

    def kill_all(self) -> None:
        for p in self.alive():
            with contextlib.suppress(self.psutil.Error):
                p.kill()


def read_tagged(proc: subprocess.Popen[str], deadline: float, lines: list[str]) -> dict[str, Any] | None:
    """The next tagged JSON line from the case, or None at EOF or deadline (other output goes to `lines`)."""
    import select

    assert proc.stdout is not None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            return None
        line = proc.stdout.readline()
        if not line:
            return None
        if line.startswith(TAG):
            return dict(json.loads(line[len(TAG) :]))
        lines.append(line)


def run_case(lib: str, fault: str, hang: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", lib, fault]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    if os.path.isdir(SRC_DIR):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), SRC_DIR) if p)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    watcher = Watcher(proc.pid)
    watcher.start()
    start = time.monotonic()
    out: list[str] = []
    result: dict[str, Any] = {}
    try:
        report = read_tagged(proc, start + hang, out)
        if fault == "ctrl_c" and report is not None and report.get("ready"):
            watcher.snapshot()
            sent = time.monotonic()
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground process group
            report = read_tagged(proc, sent + hang, out)
            result["sent"] = sent
        if report is None:
            result["hang"] = True
        else:
            result.update(report)
            try:
                proc.wait(hang)
            except subprocess.TimeoutExpired:
                result["exit_hang"] = True
            result["exited"] = time.monotonic()
    finally:
        watcher.stop.set()
        watcher.join()
        if proc.poll() is None:
            result.setdefault("hang", True)
        else:
            # Only a case that ended by itself can leave processes behind (a hung one still owns its workers).
            result["left_behind"] = len(watcher.wait_gone(2.0))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        watcher.kill_all()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    result["returncode"] = proc.returncode
    return result


def short_error(err: str) -> str:
    return err.partition(": ")[0]


def cell(fault: str, r: dict[str, Any], hang: float) -> str:
    if r.get("unsupported"):
        return "unsupported (no task timeout)"
    left = r.get("left_behind", 0)
    tail = f"; {left} process{'es' if left != 1 else ''} left behind" if left else ""
    if fault == "ctrl_c":
        if "interrupted" in r:
            text = f"KeyboardInterrupt after {r['interrupted'] - r['sent']:.2f} s"
            if r.get("exit_hang"):
                return text + f", then HANG on exit (> {hang:.0f} s)" + tail
            return text + f", exited after {r['exited'] - r['sent']:.2f} s" + tail
        if "other" in r:
            return f"{short_error(r['other'])} after {r['at'] - r['sent']:.2f} s" + tail
        if r.get("hang"):
            return f"HANG (> {hang:.0f} s after Ctrl-C)" + tail
        return "ignored Ctrl-C, finished the map" + tail
    if r.get("hang") or ("ok" not in r and "lost" not in r):
        return f"HANG (> {hang:.0f} s)" + tail
    if r.get("exit_hang"):
        return f"results returned, then HANG on exit (> {hang:.0f} s)" + tail
    if "lost" in r:
        return f"{short_error(r['lost'])}, all results lost" + tail
    errors = {int(k): v for k, v in r["errors"].items()}
    ok, n = r["ok"], N
    if not errors:
        if r.get("bad_value"):
            return f"no error; item {BAD} = {r['bad_value']}, {ok}/{n} results" + tail
        return f"no error, {ok}/{n} results" + tail
    names = sorted({short_error(e) for e in errors.values()})
    if list(errors) == [BAD]:
        return f"{names[0]} for that item, {ok}/{n} results" + tail
    return f"{'/'.join(names)} for {len(errors)} items, {ok}/{n} results" + tail


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", nargs=2, metavar=("LIB", "FAULT"), help=argparse.SUPPRESS)
    parser.add_argument("--libs", default=",".join(LIBS))
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--hang", type=float, default=20.0, help="seconds after which a case is a HANG")
    parser.add_argument("--jobs", type=int, default=3, help="cases run at once (hangs mostly wait)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    if args.case:
        case_main(*args.case)
        return

    import importlib.util

    libs = [x for x in args.libs.split(",") if x]
    faults = [x for x in args.faults.split(",") if x]
    for name in libs + faults:
        if name not in LIBS and name not in FAULTS:
            parser.error(f"unknown library or fault {name!r}")
    modules = {
        "manycore": "manycore",
        "mp": "multiprocessing",
        "cf": "concurrent.futures",
        "joblib": "joblib",
        "mpire": "mpire",
        "pebble": "pebble",
    }
    installed = {lib: importlib.util.find_spec(modules[lib]) is not None for lib in libs}
    cases = [(lib, fault) for fault in faults for lib in libs if installed[lib]]
    print(
        f"{len(cases)} cases, up to {args.jobs} at a time, {args.hang:.0f} s each at most ...",
        file=sys.stderr,
    )
    results: dict[tuple[str, str], dict[str, Any]] = {}

    def one(case: tuple[str, str]) -> None:
        # Ctrl-C timings are worth little on a busy machine: those run alone, after the rest.
        results[case] = run_case(*case, args.hang)
        print(f"  {case[0]:9} {case[1]:21} {cell(case[1], results[case], args.hang)}", file=sys.stderr)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(one, [c for c in cases if c[1] != "ctrl_c"]))
    for case in [c for c in cases if c[1] == "ctrl_c"]:
        one(case)

    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"lib": lib, "fault": fault, **r} for (lib, fault), r in results.items()], f, indent=1)

    print(
        f"\n### What happens when ... ({N} items on 2 workers, item {BAD} faulty; HANG = no result "
        f"within {args.hang:.0f} s)\n"
    )
    print("| fault | " + " | ".join(LIBS[lib] for lib in libs) + " |")
    print("|---|" + "---|" * len(libs))
    for fault in faults:
        row = [
            cell(fault, results[(lib, fault)], args.hang) if installed[lib] else "not installed"
            for lib in libs
        ]
        print(f"| {FAULTS[fault]} | " + " | ".join(row) + " |")
    print(
        '\nmanycore: Pool.map(on_error="return", task_timeout=...); multiprocessing: Pool.imap; '
        "ProcessPoolExecutor: submit; joblib: Parallel(timeout=...); mpire: WorkerPool.map(task_timeout=...); "
        "pebble: ProcessPool.schedule(timeout=...). Ctrl-C is SIGINT to the whole process group."
    )


if __name__ == "__main__":
    main()
