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


# Globals filled in place (the standard library docs' initializer pattern, a memo dict), and the parent changing
# a global after a worker has it. Pool(1) where it matters which worker ran what.
STATE_SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys

    import manycore

    STATE = {}
    CACHE = {}
    CONN = None
    K = 1
    LATE = "before"


    def init(tag):
        global CONN
        STATE["conn"] = f"{tag}-{os.getpid()}"  # filled in place: the name keeps the parent's (empty) dict
        CONN = tag  # rebound


    def read_state(_):
        return os.getpid(), STATE.get("conn", "MISSING"), CONN


    def memo(x):
        CACHE[x] = True
        return len(CACHE)


    def cache_size(_):  # another function referencing CACHE, first sent after memo filled it
        return len(CACHE)


    def helper():
        return "first"


    def use_helper(_):
        return helper()


    def add_k(x):
        return x + K


    def read_late(_):
        return LATE


    method = sys.argv[1]
    out = {}
    with manycore.Pool(2, initializer=init, initargs=("db",), start_method=method) as pool:
        out["state"] = pool.map(read_state, range(8), chunksize=1)
    with manycore.Pool(1, start_method=method) as pool:
        # One call at a time: the three map chunks of one worker could run out of order (the second was still
        # being sent by this thread when the supervisor sent the third), and memo counts what ran before it.
        out["memo"] = [pool.apply(memo, (x,)) for x in range(3)]
        out["cache_size"] = pool.apply(cache_size, (0,))
        out["memo_again"] = pool.apply(memo, (9,))
        out["helper1"] = pool.apply(use_helper, (0,))
        out["k1"] = pool.apply(add_k, (0,))

        def helper():  # redefined in the parent once the worker has the first one
            return "second"

        def use_helper2(_):
            return helper()

        K = 2
        LATE = "after"  # changed before any worker has it
        out["helper2"] = pool.apply(use_helper2, (0,))
        out["k2"] = [pool.apply(add_k, (0,)), pool.apply(lambda x: x + K, (0,))]
        out["late"] = pool.apply(read_late, (0,))
    print(json.dumps(out))
    """
)


def run_script(tmp_path: Path, start_method: str, text: str = SCRIPT) -> dict[str, object]:
    script = tmp_path / "user_script.py"
    script.write_text(text)
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


@pytest.mark.timeout(120)
def test_main_globals_live_on_in_the_worker(tmp_path: Path, start_method: str) -> None:
    """As in a module imported once per worker: a name the worker has is never replaced by a value the parent
    sends later (first arrival wins), so what the worker's code filled in place or rebound lives on."""
    out = run_script(tmp_path, start_method, STATE_SCRIPT)
    # The initializer filled a dict in place (the standard library docs' pattern): every task sees it filled.
    for pid, conn, tag in out["state"]:  # type: ignore[attr-defined]
        assert (conn, tag) == (f"db-{pid}", "db"), out["state"]
    # A memo dict filled by one task is not emptied when another function referencing it arrives.
    assert out["memo"] == [1, 2, 3]
    assert out["cache_size"] == 3
    assert out["memo_again"] == 4
    # The parent's later rebinding of a name the worker has is not seen there, as with multiprocessing's fork
    # workers; a name first sent after the parent changed it arrives with its new value.
    assert out["helper1"] == out["helper2"] == "first"
    assert out["k1"] == 1 and out["k2"] == [1, 1]
    assert out["late"] == "after"


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
