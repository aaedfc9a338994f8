"""Every start method runs the same code, including scripts without a __main__ guard and __main__ objects."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import manycore
from manycore import _launch

from tasks import init_state, read_state, square

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore:This process.*fork:DeprecationWarning"),
]

SCRIPT = """
import dataclasses
import manycore

@dataclasses.dataclass
class Point:
    x: int
    y: int

def square(x):
    return x * x

def norm(p):
    return Point(p.x * p.x, p.y * p.y)

offset = 100
with manycore.Pool(processes=2, start_method={method!r}) as pool:
    print(pool.map(square, [1, 2, 3, 4, 5]))
    print(pool.map(lambda x: x + offset, [1, 2]))
    out = pool.map(norm, [Point(1, 2), Point(3, 4)])
    print(out, all(isinstance(p, Point) for p in out))
"""


def test_script_without_main_guard(tmp_path: Path, start_method: str) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(SCRIPT.format(method=start_method)))
    run = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "[1, 4, 9, 16, 25]"
    assert lines[1] == "[101, 102]"
    assert lines[2] == "[Point(x=1, y=4), Point(x=9, y=16)] True"


def test_core_calls_on_every_start_method(start_method: str, no_leftover_processes: None) -> None:
    with manycore.Pool(2, start_method=start_method, initializer=init_state, initargs=(7,)) as pool:
        assert pool.map(square, range(100)) == [x * x for x in range(100)]
        assert pool.map(read_state, range(4)) == [7] * 4
        assert sorted(pool.imap_unordered(square, range(10))) == [x * x for x in range(10)]
        assert pool.apply(lambda: 42) == 42


def test_multiprocessing_context_names_the_start_method(no_leftover_processes: None) -> None:
    import multiprocessing

    with manycore.Pool(2, context=multiprocessing.get_context("spawn")) as pool:
        assert pool._scheduler.start_method == "spawn"
        assert pool.map(square, [3]) == [9]


def test_unknown_start_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="start_method"):
        manycore.Pool(2, start_method="teleport")


def test_drop_in_script_with_only_the_import_changed(tmp_path: Path) -> None:
    source = textwrap.dedent("""
        from multiprocessing import Pool

        def f(x):
            return x * x

        if __name__ == '__main__':
            with Pool(processes=2) as pool:
                print(pool.map(f, range(10)))
                print(pool.apply_async(f, (20,)).get(timeout=30))
                print(list(pool.imap_unordered(f, range(3))) != [])
                it = pool.imap(f, range(5))
                print(next(it), next(it))
                print(pool.starmap(pow, [(2, 5)]))
    """)
    outputs = []
    for module in ("multiprocessing", "manycore"):
        script = tmp_path / f"with_{module}.py"
        script.write_text(source.replace("from multiprocessing import Pool", f"from {module} import Pool"))
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1]


FLAGS_SCRIPT = """
import sys
import manycore

def flags(_):
    return sys.flags.optimize, sys.flags.dont_write_bytecode, sys.warnoptions

if __name__ == "__main__":
    with manycore.Pool(1, start_method=sys.argv[1]) as pool:
        print(pool.map(flags, [0]) == [flags(0)], pool.map(flags, [0]))
"""


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_workers_run_with_the_interpreters_flags(tmp_path: Path, start_method: str) -> None:
    # As multiprocessing: a program run with -O (asserts off) or -W error gets workers that run the same
    # way; the fork server and spawned workers are fresh interpreters and got neither.
    script = tmp_path / "flags.py"
    script.write_text(FLAGS_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-O", "-B", "-W", "error", "-W", "ignore::ImportWarning", str(script), start_method],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True "), done.stdout


def test_a_main_function_pickles_under_python_bb(tmp_path: Path) -> None:
    # Found by review: the pickler looked for a str among a code object's arguments with ``in``, comparing it
    # with bytes: under -bb that comparison raises BytesWarning, and every call of a __main__ function failed.
    script = tmp_path / "flags.py"
    script.write_text(FLAGS_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-bb", str(script), _launch.default_start_method()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True "), done.stdout
