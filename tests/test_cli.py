"""The ``manycore`` command line, run as a user runs it: real subprocesses (``python -m manycore``), real files.

Each test writes ``clitasks.py`` into its temporary directory and runs there, so the module is found the way a
user's is (the current directory first on sys.path). Functions that must count their calls append their
argument to the file named by ``$CLI_CALLS``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import journal_tasks

TASKS = """
import os, time

def double(x):
    return 2 * int(x)

def add(a, b):
    return a + b

def echo(x):
    return x

def fail_on_c(x):
    if x == "c":
        raise ValueError(f"bad {x!r}")
    return x.upper()

def as_set(x):
    return {x}

def nap(x):
    if x == "sleep":
        time.sleep(30)
    return x

def slow(x):
    open("started", "a").close()
    time.sleep(30)
    return x

def counted(x):
    with open(os.environ["CLI_CALLS"], "a") as f:
        f.write(f"{x}\\n")
    return int(x) * 3

class Shape:
    @staticmethod
    def area(side):
        return int(side) ** 2

NOT_CALLABLE = 3
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "clitasks.py").write_text(TASKS)
    return tmp_path


def cli(
    cwd: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "manycore", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def lines(text: str) -> list[object]:
    return [json.loads(line) for line in text.splitlines()]


# ---- input formats ---------------------------------------------------------------------------------------


def test_text_lines_from_stdin_keep_empty_lines(work: Path) -> None:
    run = cli(work, "run", "clitasks:echo", "--workers", "2", stdin="a\n\nb c\r\nlast")
    assert run.returncode == 0, run.stderr
    assert lines(run.stdout) == ["a", "", "b c", "last"]


def test_several_files_and_stdin_are_read_in_order(work: Path) -> None:
    (work / "one.txt").write_text("1\n2\n")
    (work / "two.txt").write_text("5\n")
    run = cli(work, "run", "clitasks:double", "one.txt", "-", "two.txt", stdin="3\n4\n")
    assert run.returncode == 0, run.stderr
    assert lines(run.stdout) == [2, 4, 6, 8, 10]


def test_jsonl_skips_blank_lines(work: Path) -> None:
    (work / "in.jsonl").write_text('{"a": 1}\n\n  \n[1, 2]\n"s"\n')
    run = cli(work, "run", "clitasks:echo", "in.jsonl", "--jsonl")
    assert run.returncode == 0, run.stderr
    assert lines(run.stdout) == [{"a": 1}, [1, 2], "s"]


def test_jsonl_star_spreads_arrays(work: Path) -> None:
    run = cli(work, "run", "clitasks:add", "--jsonl", "--star", stdin="[1, 2]\n[[3], [4]]\n")
    assert run.returncode == 0, run.stderr
    assert lines(run.stdout) == [3, [3, 4]]


def test_csv_rows_as_dicts_and_star(work: Path) -> None:
    (work / "p.csv").write_text('a,b\n1,2\n"x\ny",z\n')
    run = cli(work, "run", "clitasks:echo", "p.csv", "--csv")
    assert run.returncode == 0, run.stderr
    assert lines(run.stdout) == [{"a": "1", "b": "2"}, {"a": "x\ny", "b": "z"}]
    run = cli(work, "run", "clitasks:add", "p.csv", "--csv", "--star")
    assert run.returncode == 0, run.stderr
    assert lines(run.stdout) == ["12", "x\nyz"]


def test_dotted_function_path(work: Path) -> None:
    run = cli(work, "run", "clitasks:Shape.area", stdin="3\n4\n")
    assert run.returncode == 0, run.stderr
    assert lines(run.stdout) == [9, 16]


# ---- output ----------------------------------------------------------------------------------------------


def test_unordered_lines_carry_the_input_index(work: Path) -> None:
    data = "".join(f"{i}\n" for i in range(200))
    run = cli(work, "run", "clitasks:double", "--unordered", "--chunksize", "1", stdin=data)
    assert run.returncode == 0, run.stderr
    pairs = lines(run.stdout)
    assert sorted(pairs) == [[i, 2 * i] for i in range(200)]  # type: ignore[type-var]


def test_output_file_replaced_only_on_completion(work: Path) -> None:
    out = work / "out.jsonl"
    out.write_text("precious\n")
    os.chmod(out, 0o640)
    (work / "good.jsonl").write_text("1\n2\n")
    (work / "bad.jsonl").write_text("1\n2\n{oops\n")
    bad = cli(work, "run", "clitasks:double", "bad.jsonl", "--jsonl", "-o", "out.jsonl")
    assert bad.returncode == 2
    assert out.read_text() == "precious\n"
    good = cli(work, "run", "clitasks:double", "good.jsonl", "--jsonl", "-o", "out.jsonl")
    assert good.returncode == 0, good.stderr
    assert (good.stdout, out.read_text()) == ("", "2\n4\n")
    assert out.stat().st_mode & 0o777 == 0o640  # the file keeps its mode
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []


def test_ctrl_c_leaves_the_output_file_alone(work: Path) -> None:
    out = work / "out.jsonl"
    out.write_text("precious\n")
    (work / "in.txt").write_text("a\nb\n")
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "manycore",
            "run",
            "clitasks:slow",
            "in.txt",
            "-o",
            "out.jsonl",
            "--workers",
            "2",
        ],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (work / "started").exists():
        assert time.monotonic() < deadline, "the slow item never started"
        time.sleep(0.05)
    assert [p.name for p in work.iterdir() if p.name.endswith(".part")] != []  # written through a temp file
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert out.read_text() == "precious\n"
    assert [p.name for p in work.iterdir() if p.name.endswith(".part")] == []


def test_an_unencodable_result_fails_its_item_only(work: Path) -> None:
    run = cli(work, "run", "clitasks:as_set", "--on-error", "record", stdin="a\n")
    assert run.returncode == 1
    [record] = lines(run.stdout)
    assert record["error"]["type"] == "TypeError"  # type: ignore[index]
    assert "item 0 (<stdin>:1): TypeError: the result (a set) cannot be written as JSON" in run.stderr


# ---- failures --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unordered", [False, True])
def test_on_error_modes(work: Path, unordered: bool) -> None:
    (work / "in.txt").write_text("a\nb\nc\nd\n")
    extra = ["--unordered"] if unordered else []
    outs = {}
    for mode in ("stop", "skip", "record"):
        run = cli(work, "run", "clitasks:fail_on_c", "in.txt", "--on-error", mode, "--chunksize", "1", *extra)
        assert run.returncode == 1, run.stderr
        assert "item 2 (in.txt:3): ValueError: bad 'c'" in run.stderr
        assert 'in fail_on_c\n        raise ValueError(f"bad {x!r}")' in run.stderr  # the worker's traceback
        got = lines(run.stdout)
        outs[mode] = sorted(got, key=json.dumps) if unordered else got
    error = {"error": {"index": 2, "type": "ValueError", "message": "bad 'c'"}}
    if unordered:
        assert outs["skip"] == sorted([[0, "A"], [1, "B"], [3, "D"]], key=json.dumps)
        assert outs["record"] == sorted([[0, "A"], [1, "B"], [2, error], [3, "D"]], key=json.dumps)
    else:
        assert outs["stop"] == ["A", "B"]
        assert outs["skip"] == ["A", "B", "D"]
        assert outs["record"] == ["A", "B", error, "D"]


def test_timeout_fails_the_sleeping_item(work: Path) -> None:
    run = cli(work, "run", "clitasks:nap", "--timeout", "1", "--on-error", "record", stdin="x\nsleep\ny\n")
    assert run.returncode == 1
    assert lines(run.stdout)[0::2] == ["x", "y"]
    assert "item 1 (<stdin>:2): TaskTimeoutError" in run.stderr


# ---- usage errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["clitasks_typo:echo"], "cannot import module 'clitasks_typo': No module named 'clitasks_typo'"),
        (["clitasks:ecco"], "'clitasks' has no attribute 'ecco'"),
        (["clitasks:NOT_CALLABLE"], "'clitasks:NOT_CALLABLE' is not callable (it is a int)"),
        (["clitasks.echo"], "expected MODULE:FUNCTION"),
        (["clitasks:counted", "missing.txt"], "cannot read input 'missing.txt': no such file"),
        (["clitasks:counted", "-o", "nodir/out.jsonl"], "cannot write output 'nodir/out.jsonl'"),
        (["clitasks:counted", "--star"], "--star needs --jsonl or --csv"),
        (["clitasks:counted", "--backend", "thread", "--timeout", "1"], "task_timeout is not supported"),
        (["clitasks:counted", "--backend", "nosuch"], "nosuch"),
        (["clitasks:counted", "--workers", "0"], "argument --workers: must be at least 1"),
        (["clitasks:counted", "--on-error", "ignore"], "argument --on-error: invalid choice"),
    ],
)
def test_usage_errors_exit_2_before_any_work(work: Path, args: list[str], message: str) -> None:
    calls = work / "calls.txt"
    run = cli(work, "run", *args, stdin="1\n2\n", env={"CLI_CALLS": str(calls)})
    assert run.returncode == 2, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert not calls.exists()


def test_bad_input_names_file_and_line(work: Path) -> None:
    (work / "in.jsonl").write_text('1\n\n{"a": }\n')
    run = cli(work, "run", "clitasks:echo", "in.jsonl", "--jsonl")
    assert run.returncode == 2
    assert "manycore run: in.jsonl:3: invalid JSON: Expecting value: line 1 column 7" in run.stderr
    assert "Traceback" not in run.stderr
    (work / "p.csv").write_text("a,b\n1,2,3\n")
    run = cli(work, "run", "clitasks:echo", "p.csv", "--csv")
    assert run.returncode == 2
    assert "manycore run: p.csv:2: the row has 3 fields, the header 2" in run.stderr


def test_no_command_and_help(work: Path) -> None:
    assert cli(work).returncode == 2
    for args in ([], ["run"], ["status"]):
        run = cli(work, *args, "--help")
        assert run.returncode == 0
        assert "examples:" in run.stdout and "exit status:" in run.stdout


# ---- the examples of --help ------------------------------------------------------------------------------

FILES = {
    "mypkg/__init__.py": "",
    "mypkg/features.py": "def extract(record):\n    return {'id': record['id'], 'words': len(record['text'].split())}\n",
    "mypkg/geo.py": "import math\ndef distance(x, y):\n    return math.hypot(float(x), float(y))\n",
    "mypkg/pages.py": "def fetch(url):\n    return {'url': url, 'size': len(url)}  # no network in tests\n",
    "inputs.jsonl": "".join(json.dumps({"id": i, "text": "a b " * i}) + "\n" for i in range(20)),
    "data.txt": '{"a": 1}\n[2, 3]\n"four"\n',
    "points.csv": "x,y\n3,4\n6,8\n",
    "urls.txt": "https://example.org/a\nhttps://example.org/bb\n",
}

Check = Callable[[Path, str], None]


def _features(path: str) -> Check:
    def check(tmp: Path, out: str) -> None:
        got = lines((tmp / path).read_text())
        assert got == [{"id": i, "words": 2 * i} for i in range(20)]

    return check


def _stdout(expected: list[object], *, unordered: bool = False) -> Check:
    def check(tmp: Path, out: str) -> None:
        got = lines(out)
        assert (sorted(got, key=json.dumps) if unordered else got) == expected

    return check


def _status(tmp: Path, out: str) -> None:
    assert "function: mypkg.features.extract" in out
    assert "done: 20" in out and "failed: 0" in out and "pending: 0" in out


# Every example of the help texts, with the files it needs (FILES) and what it must print or write. An
# example without an entry here fails test_help_examples_run: add its fixture along with it.
EXAMPLES: dict[str, Check] = {
    "manycore run json:loads data.txt": _stdout([{"a": 1}, [2, 3], "four"]),
    "seq 1 100 | manycore run math:factorial --jsonl": lambda tmp, out: _check_factorials(out),
    "manycore run mypkg.features:extract inputs.jsonl --jsonl -o features.jsonl --journal run.db --retries 2 "
    "--progress": _features("features.jsonl"),
    "manycore run mypkg.geo:distance points.csv --csv --star --unordered --workers 4": _stdout(
        [[0, 5.0], [1, 10.0]], unordered=True
    ),
    "manycore run mypkg.pages:fetch urls.txt --backend thread --workers 32 --on-error record -o pages.jsonl": (
        lambda tmp, out: _check_pages(tmp)
    ),
    "manycore run mypkg.features:extract inputs.jsonl --jsonl --timeout 60 --on-error skip > features.jsonl": (
        _features("features.jsonl")
    ),
    "manycore status run.db": _status,
    "manycore run mypkg.features:extract inputs.jsonl --jsonl -o features.jsonl --journal run.db --retry-failed": (
        _features("features.jsonl")
    ),
}


def _check_factorials(out: str) -> None:
    import math

    assert lines(out) == [math.factorial(n) for n in range(1, 101)]


def _check_pages(tmp: Path) -> None:
    got = lines((tmp / "pages.jsonl").read_text())
    assert got == [{"url": u, "size": len(u)} for u in FILES["urls.txt"].split()]


def help_examples() -> list[str]:
    """The example lines of every help text: after 'examples:', indented by two spaces, up to a blank line."""
    found: list[str] = []
    for command in ([], ["run"], ["status"]):
        text = subprocess.run(
            [sys.executable, "-m", "manycore", *command, "--help"], capture_output=True, text=True, check=True
        ).stdout
        section = text.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0]
        for line in section.splitlines():
            assert re.match(r"  \S", line), f"not an example line: {line!r}"
            if line.strip() not in found:
                found.append(line.strip())
    return found


@pytest.mark.timeout(120)
def test_help_examples_run(tmp_path: Path) -> None:
    examples = help_examples()
    assert len(examples) >= 5
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    # `manycore` in an example (first word or after a pipe) runs this interpreter's manycore.
    prelude = f'manycore() {{ {sys.executable!r} -m manycore "$@"; }}\n'
    # status needs the journal that the journaled example writes: run examples in that order.
    examples.sort(key=lambda line: line.startswith("manycore status"))
    for example in examples:
        assert example in EXAMPLES, f"an example of --help has no fixture in EXAMPLES: {example!r}"
        assert "manycore " in example
        run = subprocess.run(["bash", "-c", prelude + example], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, f"{example}\n{run.stderr}"
        EXAMPLES[example](tmp_path, run.stdout)
    assert set(EXAMPLES) == set(examples), "fixtures of examples no longer in --help: remove them"


# ---- memory ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_memory_stays_flat_on_a_long_input(work: Path) -> None:
    """2 million lines through a trivial function: the CLI's peak RSS stays far below the input's items."""
    with open(work / "big.txt", "w") as f:
        f.writelines(f"{i}\n" for i in range(2_000_000))
    wrapper = textwrap.dedent("""
        import resource, subprocess, sys
        run = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)
        tail = run.stdout[-20:].decode().split()[-1]
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(run.returncode, tail, peak)
    """)
    cmd = [sys.executable, "-m", "manycore", "run", "builtins:len", "big.txt", "--workers", "2"]
    run = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], cwd=work, capture_output=True, text=True, timeout=110
    )
    status, last, peak_kib = run.stdout.split()
    assert (status, last) == ("0", "7"), run.stderr
    assert int(peak_kib) < 150 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"


# ---- journal and status ----------------------------------------------------------------------------------


def test_status_of_a_missing_journal(work: Path) -> None:
    run = cli(work, "status", "nope.db")
    assert run.returncode == 2
    assert "manycore status: no such journal: 'nope.db'" in run.stderr


def test_files_that_are_not_journals_are_usage_errors(work: Path) -> None:
    (work / "notes.txt").write_text("not a journal\n" * 100)
    run = cli(work, "status", "notes.txt")
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("manycore status: ") and "Traceback" not in run.stderr
    run = cli(work, "run", "clitasks:echo", "--journal", "notes.txt", stdin="a\n")
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("manycore run: ") and "Traceback" not in run.stderr
    assert (work / "notes.txt").read_text() == "not a journal\n" * 100


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_journal_rerun_computes_nothing_done(work: Path) -> None:
    calls = work / "calls.txt"
    env = {"CLI_CALLS": str(calls)}
    data = "".join(f"{i}\n" for i in range(50))
    first = cli(work, "run", "clitasks:counted", "--journal", "run.db", stdin=data, env=env)
    assert first.returncode == 0, first.stderr
    assert sorted(map(int, _calls(calls))) == list(range(50))
    again = cli(work, "run", "clitasks:counted", "--journal", "run.db", stdin=data, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout == "".join(f"{3 * i}\n" for i in range(50))
    assert len(_calls(calls)) == 50  # nothing ran a second time
    mixed = cli(work, "run", "clitasks:counted", "--journal", "run.db", "--unordered", stdin=data, env=env)
    assert mixed.returncode == 2  # results of another shape: refused, not mixed in
    assert "resume with the options of the first run" in mixed.stderr and "Traceback" not in mixed.stderr


def test_status_shows_counts_and_failures_then_retry_failed(work: Path) -> None:
    (work / "in.txt").write_text("a\nb\nc\nd\n")
    run = cli(work, "run", "clitasks:fail_on_c", "in.txt", "--journal", "run.db", "--on-error", "skip")
    assert run.returncode == 1
    status = cli(work, "status", "run.db")
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "function: clitasks.fail_on_c" in out
    assert "done: 3" in out and "failed: 1" in out and "pending: 0" in out
    assert "item 2: ValueError: bad 'c'" in out
    assert 'raise ValueError(f"bad {x!r}")' in out  # its worker traceback
    # Failed items stay failed on a rerun, unless --retry-failed (here the item fails again).
    rerun = cli(work, "run", "clitasks:fail_on_c", "in.txt", "--journal", "run.db", "--on-error", "record")
    assert rerun.returncode == 1
    assert lines(rerun.stdout)[2]["error"]["type"] == "ValueError"  # type: ignore[index]
    retry = cli(work, "run", "clitasks:fail_on_c", "in.txt", "--journal", "run.db", "--retry-failed")
    assert retry.returncode == 1 and "item 2 (in.txt:3): ValueError" in retry.stderr


@pytest.mark.timeout(120)
def test_sigkill_then_resume(work: Path) -> None:
    """Kill the CLI with SIGKILL at 20 random moments of a 20,000-item run, then finish it: no run computes an
    item the journal held when it started, the output is a clean run's, and the final run computes exactly the
    items the journal did not count as done, each once."""
    import random

    from manycore import _journal

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    n = 20_000
    (work / "in.txt").write_text("".join(f"{i}\n" for i in range(n)))
    calls = work / "calls.txt"
    env = {**os.environ, "CLI_CALLS": str(calls)}
    args = [sys.executable, "-m", "manycore", "run", "clitasks:counted", "in.txt", "--journal", "run.db"]
    args += ["-o", "out.jsonl", "--workers", "2"]
    for kill in range(20):
        # SIGKILL once a random share (up to 1/20) of the items left have been computed (the calls file says
        # how many); each run must not compute again what the journal held when it started.
        start = len(_calls(calls))
        held = journal_tasks.committed(work / "run.db")
        target = start + rng.randrange(1, max(2, (n - len(held)) // 20))
        child = subprocess.Popen(
            args, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while child.poll() is None and len(_calls(calls)) < target:
            time.sleep(0.005)
        assert child.poll() is None, f"seed {seed}: run {kill} ended before it was killed"
        child.kill()
        child.wait(timeout=30)
        _wait_until_quiet(calls)  # the killed run's workers notice and stop
        again = held & {int(x) for x in _calls(calls)[start:]}
        assert not again, f"seed {seed}: run {kill} computed committed items again: {sorted(again)[:10]}"
    assert not (work / "out.jsonl").exists(), f"seed {seed}"
    done = _journal.read_status(str(work / "run.db")).done if (work / "run.db").exists() else 0
    before = len(_calls(calls))
    final = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, f"seed {seed}: {final.stderr}"
    assert (work / "out.jsonl").read_text() == "".join(f"{3 * i}\n" for i in range(n)), f"seed {seed}"
    computed = _calls(calls)[before:]
    assert len(computed) == len(set(computed)) == n - done, f"seed {seed}: done {done}"


def _wait_until_quiet(path: Path) -> None:
    deadline = time.monotonic() + 10
    size = -1
    while time.monotonic() < deadline:
        now = path.stat().st_size if path.exists() else 0
        if now == size:
            return
        size = now
        time.sleep(0.3)
    raise AssertionError(f"{path} still grows 10 s after the run was killed")
