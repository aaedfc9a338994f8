#!/usr/bin/env python3
"""``manycore run`` against GNU parallel, xargs and a serial loop: a trivial function over 1,000,000 lines.

    python benchmarks/cli.py [--lines 1000000] [--repeats 3] [--workers 2] [--block-lines 50000] [--sample 2000]

The work is the same everywhere: each input line (the numbers 1..LINES, one per line, in a temporary file)
becomes ``int(line) + 1``, written as one JSON line to an output file. Tools and forms:

- ``serial``: one Python process runs the loop over the whole file (the baseline);
- ``manycore``: ``python -m manycore run benchfn:inc LINES -o OUT --workers W`` (``benchfn`` a module the
  script writes next to the input; manycore's default ``--chunksize auto``);
- ``parallel-pipe``: ``parallel --pipe -N BLOCK -j W -k python block.py < LINES > OUT``: each job is one
  Python process running the same loop over a block of BLOCK lines (one interpreter start per block);
- ``parallel-pipepart``: ``parallel --pipepart -a LINES --block 1M -j W -k python block.py > OUT``, GNU
  parallel's fastest form for a file (the blocks are read by each job, not passed through parallel);
- ``xargs``: ``xargs -P W -n BLOCK -s 2000000 python block.py < LINES > OUT``: each process gets BLOCK lines
  as arguments (``-s`` raised so that BLOCK arguments fit on one command line); the order is not kept;
- ``parallel-1``, ``xargs-1``: one Python process per line (``parallel -j W -k python block.py {}``,
  ``xargs -P W -n 1 python block.py``), the way these tools are often used, on the first SAMPLE lines only;
  their items/s is SAMPLE / wall, extrapolated to the full input.

Every Python process is this interpreter (``sys.executable``), started fresh for each run; every command runs
with its input and output files handed over directly (no shell). The repeats are interleaved across the
tools, so drift of a shared machine hits them all alike; the table gives the median wall time, [min-max],
items/s (items / median wall), the ratio to the serial loop and manycore's ratio to each tool (above 1:
manycore is faster). Each run's output is checked after the clock stops: every value present and right, in
input order where the tool promises it (``xargs`` is compared as a sorted list). Peak RSS: ``ru_maxrss``
of the command's process tree, as ``/usr/bin/time -f %M`` reports it (the largest single process of the
tree, not a sum; ``wait4``'s figure where there is no ``/usr/bin/time``) and, for manycore, the main
process's own peak (``VmHWM``, sampled while it runs). A tool that is not installed is skipped and named.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TIME_BIN = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
SRC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

MODULE = """\
def inc(line):
    return int(line) + 1
"""

# The per-block script of parallel, xargs and the serial loop: its lines from argv, or from stdin when it has
# no arguments; the output of a block goes out in one write, so that the blocks of processes sharing one
# output file (xargs) do not interleave mid-line.
BLOCK_SCRIPT = """\
import json, os, sys
from benchfn import inc
items = sys.argv[1:] if len(sys.argv) > 1 else (line.rstrip("\\n") for line in sys.stdin)
out = "".join([json.dumps(inc(item)) + "\\n" for item in items]).encode()
while out:
    out = out[os.write(1, out):]
"""


def vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def timed(
    argv: list[str], stdin: str | None, stdout: str, cwd: str, env: dict
) -> tuple[float, int, int | None]:
    """Run argv; return (wall s, ru_maxrss KiB of its tree, the main process's own peak RSS KiB).

    The ru_maxrss of a child started straight from this process would start at this process's RSS (Linux keeps
    the high-water mark across fork and exec), so the command runs under ``/usr/bin/time -f %M``, a small C
    process, where there is one; otherwise the figure is wait4's and at least this process's RSS.
    """
    hwm: list[int] = []
    main_pid = None
    stdout = os.devnull if "-o" in argv else stdout  # manycore writes -o itself
    rss_file = os.path.join(cwd, "maxrss.txt")
    if TIME_BIN:
        argv = [TIME_BIN, "-f", "%M", "-o", rss_file, *argv]
    with open(stdin or os.devnull, "rb") as fin, open(stdout, "wb") as fout, tempfile.TemporaryFile() as ferr:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=fin, stdout=fout, stderr=ferr, cwd=cwd, env=env)
        done = threading.Event()

        def sample() -> None:
            nonlocal main_pid
            while not done.wait(0.02):
                if main_pid is None and TIME_BIN:  # the command is time's child
                    try:
                        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                            main_pid = int(f.read().split()[0])
                    except (OSError, IndexError, ValueError):
                        continue
                value = vm_hwm_kib(main_pid or proc.pid)
                if value is not None:
                    hwm.append(value)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            ferr.seek(0)
            raise RuntimeError(
                f"{argv[:4]} exited {proc.returncode}: {ferr.read().decode(errors='replace')[-2000:]}"
            )
    return elapsed, usage.ru_maxrss, max(hwm) if hwm else None


def check(path: str, n: int, ordered: bool) -> str:
    """Every value 2..n+1 exactly once (in order if ``ordered``), read as a stream so the parent stays small."""
    seen, count, expected = bytearray(n + 2), 0, 2
    with open(path, "rb") as f:
        for line in f:
            count += 1
            try:
                value = int(line)
            except ValueError:
                return f"WRONG: line {count} is {line[:40]!r}"
            if ordered and value != expected:
                return f"WRONG: line {count} is {value}, expected {expected}"
            expected += 1
            if not 2 <= value <= n + 1 or seen[value]:
                return f"WRONG: line {count} is {value}, out of range or a duplicate"
            seen[value] = 1
    if count != n:
        return f"WRONG: {count} lines, expected {n}"
    return "ok (ordered)" if ordered else "ok (as a set)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-lines", type=int, default=50_000, help="lines per job for parallel/xargs")
    parser.add_argument("--sample", type=int, default=2000, help="lines for the one-process-per-line forms")
    args = parser.parse_args()
    py, w, n, block = sys.executable, str(args.workers), args.lines, str(args.block_lines)
    sample = min(args.sample, n)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC_DIR, os.environ.get("PYTHONPATH")]))}
    notes: list[str] = []

    with tempfile.TemporaryDirectory(prefix="manycore-cli-bench-") as tmp:
        lines_path, sample_path = os.path.join(tmp, "lines.txt"), os.path.join(tmp, "sample.txt")
        with open(lines_path, "w") as f:
            for start in range(1, n + 1, 100_000):
                f.write("".join(f"{i}\n" for i in range(start, min(start + 100_000, n + 1))))
        with open(sample_path, "w") as f:
            f.write("".join(f"{i}\n" for i in range(1, sample + 1)))
        with open(os.path.join(tmp, "benchfn.py"), "w") as f:
            f.write(MODULE)
        with open(os.path.join(tmp, "block.py"), "w") as f:
            f.write(BLOCK_SCRIPT)
        out = os.path.join(tmp, "out.txt")

        # name: (argv, stdin file, items, output in input order?, description)
        tools: dict[str, tuple[list[str], str | None, int, bool, str]] = {
            "serial": ([py, "block.py"], lines_path, n, True, "one Python loop"),
            "manycore": (
                [py, "-m", "manycore", "run", "benchfn:inc", lines_path, "-o", out, "--workers", w],
                None,
                n,
                True,
                "manycore run",
            ),
        }
        parallel, xargs = shutil.which("parallel"), shutil.which("xargs")
        if parallel:
            version = subprocess.run([parallel, "--version"], capture_output=True, text=True).stdout.split(
                "\n"
            )[0]
            notes.append(f"parallel: {version}")
            tools["parallel-pipe"] = (
                [parallel, "--will-cite", "--pipe", "-N", block, "-j", w, "-k", py, "block.py"],
                lines_path,
                n,
                True,
                f"--pipe -N {block}",
            )
            tools["parallel-pipepart"] = (
                [
                    parallel,
                    "--will-cite",
                    "--pipepart",
                    "-a",
                    lines_path,
                    "--block",
                    "1M",
                    "-j",
                    w,
                    "-k",
                    py,
                    "block.py",
                ],
                None,
                n,
                True,
                "--pipepart --block 1M",
            )
            tools["parallel-1"] = (
                [parallel, "--will-cite", "-a", sample_path, "-j", w, "-k", py, "block.py", "{}"],
                None,
                sample,
                True,
                f"one process per line, {sample} lines",
            )
        else:
            notes.append("GNU parallel is not installed: its rows are skipped")
        if xargs:
            tools["xargs"] = (
                [xargs, "-P", w, "-n", block, "-s", "2000000", py, "block.py"],
                lines_path,
                n,
                False,
                f"-n {block}",
            )
            tools["xargs-1"] = (
                [xargs, "-P", w, "-n", "1", py, "block.py"],
                sample_path,
                sample,
                False,
                f"one process per line, {sample} lines",
            )
        else:
            notes.append("xargs is not installed: its rows are skipped")

        walls: dict[str, list[float]] = {name: [] for name in tools}
        rss: dict[str, list[int]] = {name: [] for name in tools}
        main_rss: list[int] = []
        checks: dict[str, set[str]] = {name: set() for name in tools}
        loads = [os.getloadavg()]
        for repeat in range(args.repeats):
            for name, (argv, stdin, items, ordered, _) in tools.items():
                print(f"repeat {repeat + 1}/{args.repeats} {name} ...", end=" ", file=sys.stderr, flush=True)
                wall, maxrss, hwm = timed(argv, stdin, out, tmp, env)
                walls[name].append(wall)
                rss[name].append(maxrss)
                if name == "manycore" and hwm is not None:
                    main_rss.append(hwm)
                checks[name].add(check(out, items, ordered))
                print(f"{wall:.2f} s", file=sys.stderr, flush=True)
            loads.append(os.getloadavg())

    serial_rate = n / statistics.median(walls["serial"])
    mc_rate = n / statistics.median(walls["manycore"])
    print(
        f"{n:,} lines -> int(line) + 1 -> JSON lines in a file, {args.workers} workers, "
        f"median of {args.repeats} interleaved repeats; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    fmt = " ".join(f"{x:.2f}" for x in loads[0])
    print(f"load average (1, 5, 15 min) at start: {fmt}; after each repeat: ", end="")
    print("; ".join(" ".join(f"{x:.2f}" for x in load) for load in loads[1:]))
    print()
    print(
        "| tool | form | items | wall s median [min-max] | items/s | x serial | manycore x | peak RSS MiB | output |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (_, _, items, _, form) in tools.items():
        median = statistics.median(walls[name])
        rate = items / median
        print(
            f"| {name} | {form} | {items:,} | {median:.2f} [{min(walls[name]):.2f}-{max(walls[name]):.2f}] "
            f"| {rate:,.0f} | {rate / serial_rate:.3g} | {mc_rate / rate:.3g} "
            f"| {max(rss[name]) / 1024:.0f} | {', '.join(sorted(checks[name]))} |"
        )
    print()
    print(
        "peak RSS: ru_maxrss of the command's process tree (its largest single process); "
        "manycore's main process alone (VmHWM): "
        + (f"{max(main_rss) / 1024:.0f} MiB" if main_rss else "not sampled")
    )
    print(
        "x serial: items/s / the serial loop's; manycore x: manycore's items/s / the tool's (> 1: manycore faster)"
    )
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
