"""Code from the user's script (``__main__``) sent by value: one module namespace per worker, real tracebacks.

Each test runs a real script with ``subprocess``, so that the functions really live in ``__main__`` (in a
pytest module they would be importable and pickled by reference, which hides both problems).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys
    import traceback

    import manycore

    CONFIG = None
    COUNT = 0


    def init(value):
        global CONFIG
        CONFIG = value


    def read_config(_):
        return CONFIG


    def bump(_):
        global COUNT
        COUNT += 1
        return os.getpid(), COUNT


    def helper():
        return "first"


    def use_helper(_):
        return helper()


    def boom(x):
        raise ValueError(f"boom {x}")  # the line the remote traceback must show


    def boom_at_7(x):
        if x == 7:
            raise KeyError(x)
        return x


    def report(exc):
        return "".join(traceback.format_exception(exc.__cause__))


    method = sys.argv[1]
    out = {}
    with manycore.Pool(2, initializer=init, initargs=(5,), start_method=method) as pool:
        out["pool_config"] = pool.map(read_config, range(8), chunksize=1)
        out["bumps"] = pool.map(bump, range(20), chunksize=1)
        out["helper1"] = pool.map(use_helper, range(4), chunksize=1)

        def helper():  # redefined, as in a notebook cell run again: a new task must use the new one
            return "second"

        def use_helper2(_):
            return helper()

        out["helper2"] = pool.map(use_helper2, range(4), chunksize=1)
        try:
            pool.apply(boom, (3,))
        except ValueError as exc:
            out["apply_tb"] = report(exc)
        try:
            pool.map(boom_at_7, range(10), chunksize=2)
        except KeyError as exc:
            out["map_notes"] = getattr(exc, "__notes__", [])
            out["map_message"] = str(exc)
    with manycore.Executor(2, initializer=init, initargs=(7,), start_method=method) as ex:
        out["executor_config"] = [ex.submit(read_config, i).result(30) for i in range(4)]
    print(json.dumps(out))
    """
)


def run_script(tmp_path: Path, start_method: str) -> dict[str, object]:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run(
        [sys.executable, str(script), start_method],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    result["script"] = str(script)
    return result


@pytest.mark.timeout(120)
def test_main_functions_share_one_namespace_per_worker(tmp_path: Path, start_method: str) -> None:
    out = run_script(tmp_path, start_method)
    # The initializer's global is seen by every task (separately pickled functions, one namespace).
    assert out["pool_config"] == [5] * 8
    assert out["executor_config"] == [7] * 4
    # A global a task sets is seen by that worker's later tasks, as in an imported module.
    by_pid: dict[int, list[int]] = {}
    for pid, count in out["bumps"]:  # type: ignore[attr-defined]
        by_pid.setdefault(pid, []).append(count)
    for counts in by_pid.values():  # in the order the worker ran them, which need not be the input's
        assert sorted(counts) == list(range(1, len(counts) + 1)), by_pid
    # A definition the parent changed reaches the workers (the worker never rebound that name itself).
    assert out["helper1"] == ["first"] * 4
    assert out["helper2"] == ["second"] * 4


@pytest.mark.timeout(120)
def test_remote_traceback_names_the_script_and_item(tmp_path: Path, start_method: str) -> None:
    out = run_script(tmp_path, start_method)
    tb = str(out["apply_tb"])
    assert f'File "{out["script"]}", line' in tb, tb
    assert "in boom" in tb and "the line the remote traceback must show" in tb, tb
    assert "<dynamic-code>" not in tb
    # The failed map item is named by a note; type and message unchanged.
    assert out["map_message"] == "7"
    assert out["map_notes"] == ["manycore: raised by item #7 of the map"], out["map_notes"]
