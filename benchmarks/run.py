#!/usr/bin/env python3
"""Run the workloads of benchmarks/README.md for manycore and its peers, and print medians and ratios.

    python benchmarks/run.py [--libs manycore,mp,...] [--workloads W1,W2,...] [--repeats 3]
                             [--workers 2] [--json PATH] [--timeout 300]

Every (library, workload, repeat) runs in a fresh `sys.executable` child (workloads.child_main), so cold
start (W6) and peak memory (W7, W8) are measured from a clean process, and a hang or crash costs one cell,
not the run. The repeats of a workload are interleaved across libraries so that drift of this shared
machine spreads over all of them instead of landing on one.

The child is started with `python -c`: a main module without a file is one that spawn-based workers (loky,
joblib) do not re-run, so they start as light as a user's small script would let them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
SRC_DIR = os.path.join(os.path.dirname(BENCH_DIR), "src")
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import workloads  # noqa: E402  (needs BENCH_DIR on sys.path)

RESULT_TAG = workloads.RESULT_TAG
CHILD_BOOTSTRAP = "import sys, workloads; workloads.child_main(sys.argv[1:])"
ALL_LIBS = [
    "manycore",
    "manycore-shm",
    "manycore-shm-fork",
    "manycore-shm-spawn",
    "manycore-macos-like",
    "manycore-windows-like",
    "serial",
    "mp",
    "mp-fork",
    "mp-spawn",
    "ppe",
    "ppe1",
    "joblib",
    "loky",
    "mpire",
    "pebble",
]
NOT_PEERS = {
    "manycore",
    "manycore-shm",
    "manycore-shm-fork",
    "manycore-shm-spawn",
    "manycore-macos-like",
    "manycore-windows-like",
    "serial",
}  # excluded from "best peer"
# Run only when named in --libs: manycore in the portable modes that macOS and Windows run (MANYCORE_PLATFORM,
# see docs/platforms.md), and multiprocessing with spawn, the start method those platforms default to.
ON_REQUEST = {"manycore-macos-like", "manycore-windows-like", "mp-spawn"}
# Variants that only mean something in one workload. manycore-shm: W8 with the array made by
# manycore.shared_array, so that broadcasting it copies nothing; -fork and -spawn: the same with those start
# methods (the plain one uses manycore's default).
ONLY_IN = {
    "ppe1": {"W1"},
    "mp-fork": {"W6"},
    "manycore-shm": {"W8"},
    "manycore-shm-fork": {"W8"},
    "manycore-shm-spawn": {"W8"},
}
DISTRIBUTIONS = {
    "manycore": "manycore",
    "joblib": "joblib",
    "loky": "loky",
    "mpire": "mpire",
    "pebble": "Pebble",
}
SUPPORT_DISTRIBUTIONS = ["numpy", "psutil", "cloudpickle", "tqdm"]
MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------------------
# What the report shows.
# --------------------------------------------------------------------------------------------------------


def fmt_number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def fmt_rate(value: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def fmt_fixed2(value: float) -> str:
    return f"{value:.2f}"


@dataclass(frozen=True)
class Figure:
    workload: str
    key: str
    label: str
    higher_is_better: bool
    fmt: Callable[[float], str] = fmt_number


FIGURES = [
    Figure("W1", "items_per_s", "W1 items/s", True, fmt_rate),
    Figure("W2", "speedup", "W2 speed-up over serial", True, fmt_fixed2),
    Figure("W2", "paired_speedup", "W2 speed-up over serial, paired", True, fmt_fixed2),
    Figure("W2", "cpu_time_speedup", "W2 speed-up, items of 10 ms CPU time", True, fmt_fixed2),
    Figure("W3", "makespan_ratio", "W3 makespan / ideal", False, fmt_fixed2),
    Figure("W4", "gb_per_s", "W4 GB/s of input", True),
    Figure("W4b", "gb_per_s", "W4b GB/s of output", True),
    Figure("W5", "us_per_call", "W5 µs per call (median)", False),
    Figure("W6", "seconds", "W6 cold start s", False),
    Figure("W7", "rss_growth_mib", "W7 parent peak RSS growth MiB", False),
    Figure("W7", "wall_s", "W7 wall s", False),
    Figure("W8", "wall_s", "W8 wall s", False),
    Figure("W8", "footprint_mib", "W8 footprint MiB (PSS + shm)", False),
    Figure("W9", "wall_s", "W9 10,000 submits, wall s", False),
    Figure("W10", "fast_results_s", "W10 s until the 9 fast results", False),
]


# --------------------------------------------------------------------------------------------------------
# Probe: a child (--probe) reports which libraries import, and their versions.
# --------------------------------------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def probe_main() -> None:
    """Print {library: {"available", "version", "detail"}} for every library and support package."""
    import importlib

    report: dict[str, dict[str, Any]] = {}
    for library in ALL_LIBS:
        module_name = workloads.LIBRARY_MODULES.get(library)
        entry: dict[str, Any] = {"available": True, "version": None, "detail": ""}
        try:
            module = importlib.import_module(module_name) if module_name else None
            if library == "manycore" and not callable(getattr(module, "Pool", None)):
                raise ImportError(f"manycore has no Pool (imported from {getattr(module, '__path__', '?')})")
            distribution = DISTRIBUTIONS.get(library) or (
                "manycore" if library.startswith("manycore") else None
            )
            if distribution is not None:  # the manycore variants are manycore, not the standard library
                entry["version"] = getattr(module, "__version__", None) or _version(distribution)
                entry["detail"] = getattr(module, "__file__", None) or ""
            else:
                entry["version"] = f"stdlib (Python {platform.python_version()})"
        except Exception as exc:
            entry = {"available": False, "version": None, "detail": f"{type(exc).__name__}: {exc}"}
        report[library] = entry
    for distribution in SUPPORT_DISTRIBUTIONS:
        version = _version(distribution)
        report[distribution] = {"available": version is not None, "version": version, "detail": ""}
    print(RESULT_TAG + json.dumps(report), flush=True)


# --------------------------------------------------------------------------------------------------------
# Parent side: children, their leftovers, and the run plan.
# --------------------------------------------------------------------------------------------------------


@dataclass
class Record:
    library: str
    workload: str
    repeat: int
    status: str  # "ok", "ERROR" or "TIMEOUT"
    figures: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    detail: str = ""  # the child's traceback for an ERROR (JSON only)
    harness_s: float = 0.0  # the child's whole life: start-up, data preparation, workload, shutdown

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def child_env() -> dict[str, str]:
    """The children import workloads.py from here and manycore from the working tree's src/ first."""
    env = dict(os.environ)
    paths = [BENCH_DIR]
    if os.path.isdir(SRC_DIR):
        paths.append(SRC_DIR)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def compile_tree() -> None:
    """Byte-compile the working tree's manycore and the workload module, as installing a package does.

    The children import manycore from src/ and the task functions from workloads.py, where nothing else
    writes bytecode when PYTHONDONTWRITEBYTECODE is set (it is on some machines): each child, fork server
    and spawned worker then compiled them from source. That cost W6 about 50 ms, billed to manycore alone
    (0.19 s against 0.14 s with bytecode), and every worker that imports workloads.py (W8 with a fork
    server or spawn, loky's and joblib's workers) the compiler's memory.
    """
    import compileall

    for folder in (SRC_DIR, BENCH_DIR):
        if os.path.isdir(folder):
            compileall.compile_dir(folder, quiet=1)


def become_subreaper() -> None:
    """Adopt orphaned grandchildren (PR_SET_CHILD_SUBREAPER) so that strays can be found and ended."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


def _live_descendants() -> list[Any]:
    """Our descendants that still run; the exited ones that are our children (adopted) get reaped."""
    import psutil

    alive = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, ChildProcessError):
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
            elif process.ppid() == os.getpid():
                os.waitpid(process.pid, os.WNOHANG)
    return alive


def end_strays(grace_s: float = 5.0) -> list[str]:
    """Wait for what a finished child left behind to exit; stop and name those that do not.

    SIGTERM before SIGKILL: resource trackers ignore SIGTERM but exit, after unlinking the semaphores and
    shared memory they track, once the processes holding their pipe are gone. Killing them outright
    would leave those files in /dev/shm.
    """
    import psutil

    deadline = time.monotonic() + grace_s
    while (alive := _live_descendants()) and time.monotonic() < deadline:
        time.sleep(0.05)
    named = []
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            named.append(f"pid {process.pid}: {' '.join(process.cmdline())[:100]}")
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signum)
        _gone, alive = psutil.wait_procs(alive, timeout=3)
        if not alive:
            break
    return named


def stop_child(child: subprocess.Popen[str]) -> tuple[str, str]:
    """Kill the child alone first: its workers and resource trackers notice and exit on their own, and
    the trackers unlink the semaphores and shared memory they registered (killing the whole process group
    at once leaves those in /dev/shm). Whatever still holds the output pipes after a grace period is killed.
    """
    with contextlib.suppress(ProcessLookupError):
        child.kill()
    try:
        return child.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        end_strays(grace_s=0)
        return child.communicate()


def _parse_child_output(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            parsed: dict[str, Any] = json.loads(line[len(RESULT_TAG) :])
            return parsed
    return None


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


@dataclass
class ChildOutcome:
    payload: dict[str, Any] | None
    status: str
    message: str
    sampled_peak_bytes: int
    strays: list[str]
    shm_left: list[str]
    seconds: float


def run_child(command: list[str], timeout_s: float, sample_footprint: bool) -> ChildOutcome:
    """Run one child to completion or timeout, sampling its tree's footprint if asked, then clean up."""
    from footprint import PeakSampler, new_shm_files, process_tree, shm_files

    shm_before = shm_files().keys()
    started = time.perf_counter()
    # A session of its own: Ctrl-C in a terminal reaches only this orchestrator, which stops the child in order.
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        start_new_session=True,
    )
    # Our descendants are the child, its workers and any orphan they left (adopted by the subreaper).
    sampler = PeakSampler(lambda: process_tree(os.getpid(), include_root=False), shm_before)
    status, message = "ok", ""
    try:
        with sampler if sample_footprint else contextlib.nullcontext():
            try:
                stdout, stderr = child.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                stdout, stderr = stop_child(child)
                status, message = "TIMEOUT", f"killed after {timeout_s:.0f} s"
    except BaseException:  # Ctrl-C or SIGTERM: leave nothing running behind us
        stop_child(child)
        end_strays(grace_s=3)
        raise
    seconds = time.perf_counter() - started
    strays = end_strays()
    payload = _parse_child_output(stdout)
    if status == "ok" and payload is None:
        status, message = "ERROR", f"exit code {child.returncode}, no result; stderr: {_tail(stderr)}"
    return ChildOutcome(
        payload=payload,
        status=status,
        message=message,
        sampled_peak_bytes=sampler.peak,
        strays=strays,
        shm_left=sorted(new_shm_files(shm_before)),
        seconds=seconds,
    )


def probe_libraries() -> dict[str, dict[str, Any]]:
    command = [sys.executable, os.path.abspath(__file__), "--probe"]
    outcome = run_child(command, timeout_s=120, sample_footprint=False)
    if outcome.payload is None:
        raise SystemExit(f"library probe failed: {outcome.status} {outcome.message}")
    return outcome.payload


@dataclass
class Plan:
    libraries: list[str]
    workloads: list[str]
    notes: list[str]


def make_plan(requested: list[str] | None, workload_ids: list[str], probe: dict[str, dict[str, Any]]) -> Plan:
    import multiprocessing

    notes: list[str] = []
    start_method = multiprocessing.get_start_method()
    if requested is None:
        requested = [
            lib for lib in ALL_LIBS if (lib != "mp-fork" or start_method != "fork") and lib not in ON_REQUEST
        ]
        if start_method == "fork":
            notes.append("mp-fork not run: multiprocessing's default start method here is already fork.")
    libraries = []
    for library in requested:
        if probe[library]["available"]:
            libraries.append(library)
        else:
            notes.append(f"{library} skipped, not available: {probe[library]['detail']}")
    if "W2" in workload_ids and "serial" not in libraries:
        libraries.insert(0, "serial")
        notes.append("serial added: W2's speed-up is measured against it.")
    libraries.sort(key=ALL_LIBS.index)
    return Plan(libraries, workload_ids, notes)


def applies(library: str, workload: str) -> bool:
    return workload in ONLY_IN.get(library, {workload})


def derive_speedups(records: list[Record]) -> None:
    """W2's figure: median serial wall of this run / each run's wall."""
    serial = [r.figures["wall_s"] for r in records if r.workload == "W2" and r.library == "serial" and r.ok]
    if not serial:
        return
    reference = statistics.median(serial)
    for record in records:
        if record.workload == "W2" and record.ok:
            record.figures["speedup"] = reference / record.figures["wall_s"]


def record_from(library: str, workload: str, repeat: int, outcome: ChildOutcome) -> Record:
    record = Record(
        library, workload, repeat, outcome.status, message=outcome.message, harness_s=outcome.seconds
    )
    if outcome.payload is not None and "error" in outcome.payload:
        record.status, record.message = "ERROR", outcome.payload["error"]
        record.detail = outcome.payload.get("traceback", "")
    elif outcome.payload is not None:
        record.figures = outcome.payload["figures"]
        if workload == "W8":
            # The child measured once with the pool alive after the tasks, the parent sampled all along.
            record.figures["footprint_final_mib"] = record.figures["footprint_mib"]
            record.figures["footprint_sampled_peak_mib"] = outcome.sampled_peak_bytes / MIB
            record.figures["footprint_mib"] = max(
                record.figures["footprint_mib"], outcome.sampled_peak_bytes / MIB
            )
    return record


def run_plan(
    plan: Plan, params: workloads.Params, repeats: int, timeout_s: float
) -> tuple[list[Record], list[str]]:
    jobs = [
        (workload, repeat, library)
        for workload in plan.workloads
        for repeat in range(repeats)
        for library in plan.libraries
        if applies(library, workload)
    ]
    records: list[Record] = []
    warnings: list[str] = []
    shm_left: dict[str, str] = {}  # path -> the run during which it appeared
    for index, (workload, repeat, library) in enumerate(jobs, start=1):
        command = [sys.executable, "-c", CHILD_BOOTSTRAP, library, workload]
        command += [str(params.workers), str(params.spin_iterations)]
        outcome = run_child(command, timeout_s, sample_footprint=workload == "W8")
        record = record_from(library, workload, repeat, outcome)
        if workload == "W8" and record.ok:
            # One sample of the footprint walks the page tables of every process mapping the array: about
            # 47 ms of CPU, every 20 ms, so a core is busy with it while the W8 child runs. The wall comes
            # from a second run of the same child without the sampler; the sampled run's wall is kept apart.
            timed = record_from(
                library, workload, repeat, run_child(command, timeout_s, sample_footprint=False)
            )
            record.figures["wall_s_while_sampled"] = record.figures["wall_s"]
            if timed.ok:
                record.figures["wall_s"] = timed.figures["wall_s"]
            else:
                record.status, record.message = timed.status, f"unsampled run: {timed.message}"
        records.append(record)
        where = f"{library} {workload} #{repeat + 1}"
        warnings += [f"{where} left a process running (killed): {stray}" for stray in outcome.strays]
        shm_left.update(dict.fromkeys(outcome.shm_left, where))
        shown = record.figures if record.ok else f"{record.status}: {record.message}"
        print(f"[{index}/{len(jobs)}] {where} ({outcome.seconds:.1f} s): {_brief(shown)}", file=sys.stderr)
    derive_speedups(records)
    # Judged at the end: other programs on the machine make and remove /dev/shm files while a child runs.
    warnings += [
        f"{where} left /dev/shm file {path}, still there at the end (not removed)"
        for path, where in shm_left.items()
        if os.path.exists(path)
    ]
    return records, warnings


def _brief(shown: object) -> str:
    if isinstance(shown, dict):
        return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    return str(shown)[:300]


# --------------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    runs: int
    failures: list[str]


def summarize(records: list[Record], library: str, figure: Figure) -> Summary | None:
    mine = [r for r in records if r.library == library and r.workload == figure.workload]
    if not mine:
        return None
    values = [r.figures[figure.key] for r in mine if r.ok and figure.key in r.figures]
    failures = [r.status for r in mine if not r.ok]
    if not values:
        return Summary(float("nan"), float("nan"), float("nan"), 0, failures)
    return Summary(statistics.median(values), min(values), max(values), len(values), failures)


def cell(summary: Summary | None, figure: Figure) -> str:
    if summary is None:
        return ""
    if summary.runs == 0:
        return "/".join(sorted(set(summary.failures)))
    text = figure.fmt(summary.median)
    if summary.runs > 1:
        text += f" [{figure.fmt(summary.low)}-{figure.fmt(summary.high)}]"
    if summary.failures:
        text += f" ({summary.runs}/{summary.runs + len(summary.failures)} ok)"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def better_word(figure: Figure) -> str:
    return "higher" if figure.higher_is_better else "lower"


def figures_table(records: list[Record], libraries: list[str], figures: list[Figure]) -> str:
    rows = [
        [f.label, better_word(f)] + [cell(summarize(records, lib, f), f) for lib in libraries]
        for f in figures
    ]
    return markdown_table(["figure", "better", *libraries], rows)


@dataclass(frozen=True)
class Ratio:
    figure: Figure
    manycore: Summary | None
    best_peer: str | None
    best: Summary | None

    @property
    def value(self) -> float | None:
        if not (self.manycore and self.best and self.manycore.runs and self.best.runs):
            return None
        if self.best.median == 0:
            return float("inf") if self.manycore.median > 0 else 1.0
        return self.manycore.median / self.best.median

    @property
    def manycore_wins(self) -> bool | None:
        if self.value is None:
            return None
        return self.value > 1 if self.figure.higher_is_better else self.value < 1


def best_peer(
    records: list[Record], libraries: list[str], figure: Figure
) -> tuple[str | None, Summary | None]:
    candidates = []
    for library in libraries:
        summary = summarize(records, library, figure)
        if library not in NOT_PEERS and summary is not None and summary.runs:
            candidates.append((library, summary))
    if not candidates:
        return None, None
    pick = max if figure.higher_is_better else min
    return pick(candidates, key=lambda item: item[1].median)


def ratios(records: list[Record], libraries: list[str], figures: list[Figure]) -> list[Ratio]:
    found = []
    for figure in figures:
        peer, summary = best_peer(records, libraries, figure)
        found.append(Ratio(figure, summarize(records, "manycore", figure), peer, summary))
    return found


def ratio_table(found: list[Ratio]) -> str:
    rows = []
    for ratio in found:
        figure = ratio.figure
        value = ratio.value
        wins = {True: "yes", False: "no", None: "n/a"}[ratio.manycore_wins]
        rows.append(
            [
                figure.label,
                better_word(figure),
                cell(ratio.manycore, figure) or "n/a",
                f"{ratio.best_peer} {figure.fmt(ratio.best.median)}"
                if ratio.best and ratio.best_peer
                else "n/a",
                "n/a" if value is None else f"{value:.2f}",
                wins,
            ]
        )
    return markdown_table(
        ["figure", "better", "manycore", "best peer", "manycore / best peer", "beats it?"], rows
    )


def machine_facts(
    probe: dict[str, dict[str, Any]], params: workloads.Params, args: argparse.Namespace
) -> dict[str, Any]:
    import multiprocessing

    import psutil

    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model
        )
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "mp_start_method": multiprocessing.get_start_method(),
        "versions": {
            name: entry["version"]
            for name, entry in probe.items()
            if entry["available"] and name not in workloads.LIBRARY_STDLIB
        },
        "manycore_from": ("imported from " if probe["manycore"]["available"] else "not available: ")
        + probe["manycore"]["detail"],
        "workers": params.workers,
        "repeats": args.repeats,
        "timeout_s": args.timeout,
        "w2_spin_iterations": params.spin_iterations,
        # Other work on a shared machine skews every figure: show how busy it was.
        "load_average_at_start": os.getloadavg(),
    }


def header_text(facts: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in facts["versions"].items())
    iterations = facts["w2_spin_iterations"]
    w2_line = [f"- W2 item: {iterations:,} loop iterations, ~10 ms calibrated at start"] if iterations else []
    return "\n".join(
        [
            "# manycore benchmarks",
            "",
            f"- command: `{facts['command']}`",
            f"- date: {facts['date']}",
            f"- machine: {facts['cores']} cores ({facts['usable_cores']} usable), {facts['cpu_model']}, "
            f"{facts['memory_gib']} GiB, {facts['os']}",
            f"- Python: {facts['python']}, multiprocessing start method: {facts['mp_start_method']}",
            "- serial, mp, ppe, ppe1: Python's standard library",
            f"- versions: {versions}",
            f"- manycore: {facts['manycore_from']}",
            f"- workers: {facts['workers']}, repeats: {facts['repeats']} (median [min-max]), "
            f"child timeout: {facts['timeout_s']:.0f} s",
            f"- load average (1, 5, 15 min) at start: {_loads(facts['load_average_at_start'])}, "
            f"at end: {_loads(facts.get('load_average_at_end', ()))}",
            *w2_line,
        ]
    )


def _loads(loads: Sequence[float]) -> str:
    return " ".join(f"{load:.2f}" for load in loads) or "n/a"


def harness_time_text(records: list[Record], total_s: float) -> str:
    per_workload: dict[str, float] = {}
    for record in records:
        per_workload[record.workload] = per_workload.get(record.workload, 0.0) + record.harness_s
    ranked = sorted(per_workload.items(), key=lambda item: -item[1])
    return f"Harness time {total_s:.0f} s; per workload: " + ", ".join(f"{w} {s:.0f} s" for w, s in ranked)


def report(facts: dict[str, Any], records: list[Record], plan: Plan, notes: list[str], total_s: float) -> str:
    figures = [f for f in FIGURES if f.workload in plan.workloads]
    libraries = [lib for lib in plan.libraries if any(r.library == lib for r in records)]
    found = ratios(records, libraries, figures)
    parts = [
        header_text(facts),
        "## Figures: median [min-max]",
        figures_table(records, libraries, figures),
        "## manycore against the best peer (serial excluded)",
        ratio_table(found) if "manycore" in plan.libraries else "manycore was not run: no ratios.",
    ]
    failures = [
        f"- {r.library} {r.workload} #{r.repeat + 1}: {r.status} {r.message}" for r in records if not r.ok
    ]
    if failures:
        parts += ["## Failures", "\n".join(failures)]
    parts += ["## Notes", "\n".join(f"- {note}" for note in [*notes, harness_time_text(records, total_s)])]
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--libs", help=f"comma-separated, from {','.join(ALL_LIBS)} (default: all available)")
    parser.add_argument("--workloads", default=",".join(workloads.WORKLOADS), help="comma-separated W ids")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a child is killed")
    parser.add_argument("--json", metavar="PATH", help="also write every run and the summary as JSON")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.probe:
        _validate(parser, args)
    return args


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.libs is not None and (unknown := set(_split(args.libs)) - set(ALL_LIBS)):
        parser.error(f"unknown libraries: {', '.join(sorted(unknown))}")
    if unknown := set(_split(args.workloads)) - set(workloads.WORKLOADS):
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.repeats < 1 or args.workers < 1:
        parser.error("--repeats and --workers must be at least 1")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.probe:
        probe_main()
        return 0
    become_subreaper()
    compile_tree()
    # Turn SIGTERM into an exception so that run_child's cleanup stops the child and its workers too.
    signal.signal(signal.SIGTERM, _raise_on_signal)
    started = time.perf_counter()
    probe = probe_libraries()
    workload_ids = _split(args.workloads)
    plan = make_plan(_split(args.libs) if args.libs else None, workload_ids, probe)
    spin_iterations = workloads.calibrate_spin() if "W2" in workload_ids else 0
    params = workloads.Params(args.workers, spin_iterations)
    facts = machine_facts(probe, params, args)
    print(f"{', '.join(plan.libraries)} x {', '.join(workload_ids)}, {args.repeats} repeats", file=sys.stderr)
    records, warnings = run_plan(plan, params, args.repeats, args.timeout)
    total_s = time.perf_counter() - started
    facts["load_average_at_end"] = os.getloadavg()
    notes = [*plan.notes, *_standing_notes(plan, records), *warnings]
    print(report(facts, records, plan, notes, total_s))
    if args.json:
        _write_json(args.json, facts, records, plan, notes)
    return 0


def _raise_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


STANDING_NOTES = {
    "": "ppe = ProcessPoolExecutor with chunksize len/(4*workers) in W1, 1000 in W7, 1 elsewhere (items of "
    "5 ms or more); ppe1 = its default chunksize of 1, run in W1 only. loky and pebble get the same "
    "chunksizes; mp, mpire, joblib and manycore use their own automatic chunking (mp imap: 1000).",
    "W2": "W2's speed-up divides the median serial wall time of this run by each run's wall time. The paired "
    "speed-up divides the same work timed serially in the same process (half right before, half right after "
    "the parallel run) by that run's wall time, so that drift of the machine's speed over minutes cancels. "
    "The CPU-time variant runs 200 items that each burn exactly 10 ms of thread CPU time: 2.0 s of work "
    "divided by the wall time, immune to the core's clock speed.",
    "W6": "W6 includes the shutdown; for joblib that is an explicit shutdown of the executor it reuses.",
    "W9": "W9: mp, manycore and mpire use apply_async (their submit), ppe, loky and pebble submit and read "
    "through as_completed, joblib runs the 10,000 calls as one Parallel call (it has no submit).",
    "W10": "W10: imap_unordered with chunksize 1 where the library takes one (mp, mpire, joblib batch_size=1); "
    "manycore with its automatic chunking; executors submit every item and read them as completed.",
    "W7": "W7: ppe, loky and pebble submit the whole input before yielding (2 GiB held); that is their API.",
    "W8": "W8 footprint = PSS of the child and its descendants + memfd and /dev/shm files they hold open "
    "+ every /dev/shm file created during the run (including any made by other programs meanwhile), "
    "each shared page counted once. Its wall time comes from a second run of the same child with no "
    "footprint sampling: a sample costs about 47 ms of CPU every 20 ms, a core of this machine.",
}


def _standing_notes(plan: Plan, records: list[Record]) -> list[str]:
    notes = [note for workload, note in STANDING_NOTES.items() if not workload or workload in plan.workloads]
    if "manycore" in plan.libraries:
        notes.append("manycore is called without chunksize everywhere: its 'auto' is what is measured.")
    modes = sorted(
        {str(r.figures["mode"]) for r in records if r.library == "manycore" and "mode" in r.figures}
    )
    if modes:
        notes.append(
            f"W8: manycore received the array by {' and '.join(modes)} (broadcast() if Pool has it)."
        )
    return notes


def _write_json(
    path: str, facts: dict[str, Any], records: list[Record], plan: Plan, notes: list[str]
) -> None:
    figures = [f for f in FIGURES if f.workload in plan.workloads]
    summary = {
        f.label: {lib: asdict(s) for lib in plan.libraries if (s := summarize(records, lib, f)) is not None}
        for f in figures
    }
    found = [
        {
            "figure": r.figure.label,
            "best_peer": r.best_peer,
            "ratio": r.value,
            "manycore_wins": r.manycore_wins,
        }
        for r in ratios(records, plan.libraries, figures)
    ]
    document = {
        "machine": facts,
        "libraries": plan.libraries,
        "records": [asdict(r) for r in records],
        "summary": summary,
        "ratios": found,
        "notes": notes,
    }
    with open(path, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=2, default=str)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
