"""``journal=``: a map that resumes where it stopped, with real processes, real signals and a real SQLite file.

Each run logs the items it computes (``journal_tasks``); what the journal held before a run is read from the
file itself, so "no finished item is computed twice" is checked against what was committed, not assumed.
"""

from __future__ import annotations

import contextlib
import operator
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import journal_tasks as jt
import manycore
from manycore import _journal
from manycore.errors import JournalError

HERE = Path(__file__).resolve().parent


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "calls.log"
    monkeypatch.setenv(jt.CALLS, str(log))
    return log


def integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn, conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_a_second_run_computes_nothing(tmp_path: Path, calls: Path) -> None:
    db = tmp_path / "run.db"
    with manycore.Pool(2) as pool:
        first = pool.map(jt.logged_square, range(500), journal=db)
        assert first == [x * x for x in range(500)]
        assert sorted(jt.calls(str(calls))) == list(range(500))
        calls.unlink()
        again = pool.map(jt.logged_square, range(500), journal=str(db))
        assert again == first
        assert jt.calls(str(calls)) == []
        assert list(pool.imap(jt.logged_square, iter(range(500)), journal=db)) == first
        assert jt.calls(str(calls)) == []
    status = _journal.read_status(db)
    assert (status.function, status.done, status.failed, status.total) == (
        "journal_tasks.logged_square",
        500,
        0,
        500,
    )


def test_failures_are_kept_and_run_again_only_when_asked(tmp_path: Path, calls: Path) -> None:
    db = tmp_path / "run.db"
    with manycore.Pool(2) as pool:
        first = pool.map(jt.logged_fail_on_7, range(30), journal=db, on_error="return")
        assert [i for i, r in enumerate(first) if isinstance(r, ValueError)] == [7, 17, 27]
        calls.unlink()
        again = pool.map(jt.logged_fail_on_7, range(30), journal=db, on_error="return")
        assert jt.calls(str(calls)) == []
        assert [str(r) for r in again] == [str(r) for r in first]
        assert "logged_fail_on_7" in str(again[7].__cause__)  # the worker's traceback, kept by the journal
        with pytest.raises(ValueError, match="item 7 is bad"):
            pool.map(jt.logged_fail_on_7, range(30), journal=db)  # on_error="raise": the stored failure
        assert jt.calls(str(calls)) == []
        pool.map(jt.logged_fail_on_7, range(30), journal=db, on_error="return", retry_failed=True)
        assert sorted(jt.calls(str(calls))) == [7, 17, 27]
    status = _journal.read_status(db)
    assert (status.done, status.failed) == (27, 3)
    assert [(f.index, f.type, f.message) for f in status.failures] == [
        (7, "ValueError", "item 7 is bad"),
        (17, "ValueError", "item 17 is bad"),
        (27, "ValueError", "item 27 is bad"),
    ]
    assert "raise ValueError" in status.failures[0].traceback


def test_a_returned_exception_is_a_result_not_a_failure(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with manycore.Pool(2) as pool:
        for _ in range(2):  # computed, then read back
            out = pool.map(jt.returns_exception, range(4), journal=db)
            assert isinstance(out[2], KeyError) and out[:2] + out[3:] == [0, 1, 3]
    assert _journal.read_status(db).failed == 0


def test_another_function_or_input_is_refused_with_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with manycore.Pool(2) as pool:
        pool.map(operator.neg, range(100), journal=db)
        with pytest.raises(
            JournalError, match=r"written by _operator\.neg, not by this builtins\.abs.*delete"
        ):
            pool.map(abs, range(100), journal=db)
        changed = list(range(100))
        changed[42] = -1
        with pytest.raises(JournalError, match=r"items #\d+-#\d+ of the input differ.*delete") as refused:
            pool.map(operator.neg, changed, journal=db)
        # The stretch it names is the one with the changed item (how the input was cut depends on the chunks).
        first, last = map(int, re.findall(r"items #(\d+)-#(\d+)", str(refused.value))[0])
        assert first <= 42 <= last
        with pytest.raises(JournalError, match=r"the input has 50 items, but journal .* up to #99"):
            pool.map(operator.neg, range(50), journal=db)
        # A longer input extends the run: only the new items run.
        assert pool.map(operator.neg, range(120), journal=db) == [-x for x in range(120)]


def test_a_changed_function_body_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    module = tmp_path / "jmod.py"
    script = textwrap.dedent(
        f"""
        import sys, manycore
        sys.path.insert(0, {str(tmp_path)!r})
        import jmod
        try:
            print(manycore.map(jmod.f, range(5), workers=2, journal={str(db)!r}))
        except manycore.errors.JournalError as exc:
            print("refused:", exc)
        """
    )
    module.write_text("def f(x):\n    return x + 1\n")
    assert subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout == ("[1, 2, 3, 4, 5]\n")
    module.write_text("# a comment moves the lines: nothing changes\n\ndef f(x):\n    return x + 1\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == "[1, 2, 3, 4, 5]\n"
    module.write_text("def f(x):\n    return x + 2\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.startswith("refused: journal ") and "another version of jmod.f" in out and "delete" in out


def test_bad_journal_files_are_clear_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    with manycore.Pool(2) as pool:
        with pytest.raises(JournalError, match=r"notes\.txt is not a manycore journal"):
            pool.map(abs, [1], journal=text)
        assert text.read_text() == "not a database\n" * 100
        with pytest.raises(JournalError, match=r"directory .*missing does not exist"):
            pool.map(abs, [1], journal=tmp_path / "missing" / "x.db")
        with pytest.raises(TypeError, match="journal must be a path"):
            pool.map(abs, [1], journal=3)
        with pytest.raises(TypeError, match="map_async cannot take journal="):
            pool.map_async(abs, [1], journal=tmp_path / "x.db")
        with pytest.raises(TypeError, match="retry_failed=True applies to a journaled call"):
            pool.map(abs, [1], retry_failed=True)
    with pytest.raises(JournalError, match="no journal at"):
        _journal.read_status(tmp_path / "absent.db")


def test_a_journal_in_use_by_a_running_map_is_refused(tmp_path: Path, calls: Path) -> None:
    db = tmp_path / "run.db"
    with manycore.Pool(2) as pool:
        running = pool.imap(jt.logged_square, range(10), journal=db)
        assert next(running) == 0
        with pytest.raises(JournalError, match="in use by a running map"):
            pool.map(jt.logged_square, range(10), journal=db)
        assert list(running) == [x * x for x in range(1, 10)]
        assert pool.map(jt.logged_square, range(10), journal=db) == [x * x for x in range(10)]


def test_executor_map_and_the_one_call_helpers(tmp_path: Path, calls: Path) -> None:
    with manycore.Executor(2) as ex:
        assert list(ex.map(jt.logged_add, range(20), range(20), journal=tmp_path / "ex.db")) == list(
            range(0, 40, 2)
        )
        calls.unlink()
        assert list(ex.map(jt.logged_add, range(20), range(20), journal=tmp_path / "ex.db")) == list(
            range(0, 40, 2)
        )
    assert manycore.map(jt.logged_square, range(20), workers=2, journal=tmp_path / "m.db") == [
        x * x for x in range(20)
    ]
    got = sorted(
        manycore.imap(jt.logged_square, range(20), workers=2, ordered=False, journal=tmp_path / "m.db")
    )
    assert got == sorted(x * x for x in range(20))
    assert sorted(jt.calls(str(calls))) == list(
        range(20)
    )  # the executor's second run and the imap computed nothing


@pytest.mark.parametrize("backend", ["thread", "dask"])
def test_a_journal_on_an_engine_backend(backend: str, tmp_path: Path, calls: Path) -> None:
    if backend == "dask":
        pytest.importorskip("distributed")
        pool = manycore.Pool(2, backend=manycore.backends.Dask(client=_dask_client()))
    else:
        pool = manycore.Pool(2, backend=backend)
    db = tmp_path / "run.db"
    with pool:
        it = pool.imap(jt.logged_fail_on_7, range(40), journal=db, on_error="return")
        head = [next(it) for _ in range(15)]
        it.close()
        held = jt.committed(db)
        assert set(range(15)) <= held
        calls.unlink()
        out = pool.map(jt.logged_fail_on_7, range(40), journal=db, on_error="return")
        assert [repr(r) for r in out[:15]] == [repr(r) for r in head]
        assert [r if not isinstance(r, ValueError) else "bad" for r in out] == [
            "bad" if x % 10 == 7 else x * x for x in range(40)
        ]
        assert not set(jt.calls(str(calls))) & held


_CLIENT: list[object] = []
_SCRATCH: list[str] = []
_CONFIG: list[Any] = []


def _dask_client() -> object:
    if not _CLIENT:
        import dask
        import distributed

        # Dask's scratch space would otherwise stay behind in /tmp/dask-scratch-space (as tests/contract does).
        _SCRATCH.append(tempfile.mkdtemp(prefix="manycore-dask-"))
        _CONFIG.append(dask.config.set({"temporary-directory": _SCRATCH[0]}))  # undone at the module's end
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        )
        _CLIENT.append(distributed.Client(cluster))
    return _CLIENT[0]


@pytest.fixture(autouse=True, scope="module")
def _close_dask() -> object:
    yield None
    for client in _CLIENT:
        cluster = client.cluster  # type: ignore[attr-defined]
        client.close()  # type: ignore[attr-defined]
        cluster.close()
    _CLIENT.clear()
    for config in _CONFIG:
        config.__exit__(None, None, None)
    _CONFIG.clear()
    for scratch in _SCRATCH:
        shutil.rmtree(scratch, ignore_errors=True)
    _SCRATCH.clear()


# ---- the parent killed: SIGKILL at random points, Ctrl-C, then resume ---------------------------------------

RUNNER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    import manycore
    import journal_tasks as jt
    results = manycore.map(jt.logged_square, range({n}), workers=2, journal=sys.argv[1])
    assert results == [x * x for x in range({n})], "wrong results"
    print("complete", flush=True)
    """
)


def _start(script: str, db: Path, log: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        jt.CALLS: str(log),
        "MANYCORE_TEST_SLEEP": "0.0002",
    }  # 20,000 items: ~2 s on 2 workers
    return subprocess.Popen(
        [sys.executable, "-c", script, str(db)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_at_20_random_points_then_resume(tmp_path: Path) -> None:
    n = 20_000
    script = RUNNER.format(root=str(HERE), n=n)
    db = tmp_path / "run.db"
    rng = random.Random(2026)
    kills = 0
    run = 0
    grew = 0  # killed runs that committed something: the kills landed while work was being journaled
    while True:
        before = jt.committed(db)
        log = tmp_path / f"calls-{run}.log"
        proc = _start(script, db, log)
        if kills < 20:
            # A random point of the computation: after the first item ran (start-up is not what is tested).
            deadline = time.monotonic() + 60
            while not log.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.1))  # ~1/40 of the work at most: 20 kills come before the end
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        computed = jt.calls(str(log))
        again = before & set(computed)
        assert not again, f"run {run}: committed items computed again: {sorted(again)[:10]}"
        assert integrity(db) == "ok"
        if proc.returncode == 0:
            assert out == "complete\n", err
            break
        assert proc.returncode == -signal.SIGKILL, err
        grew += len(jt.committed(db)) > len(before)
        kills += 1
        run += 1
    assert kills == 20
    assert grew >= 10, f"only {grew} of 20 killed runs committed anything: the kills came too early"
    assert jt.committed(db) == set(range(n))
    status = _journal.read_status(db)
    assert (status.done, status.failed, status.total, status.pending) == (n, 0, n, 0)


@pytest.mark.timeout(120)
def test_ctrl_c_then_resume(tmp_path: Path) -> None:
    n = 20_000
    script = RUNNER.format(root=str(HERE), n=n)
    db = tmp_path / "run.db"
    proc = _start(script, db, tmp_path / "calls-0.log")
    time.sleep(0.4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, (proc.returncode, err)
    assert integrity(db) == "ok"
    held = jt.committed(db)
    assert held, "nothing was committed before Ctrl-C"
    proc = _start(script, db, tmp_path / "calls-1.log")
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (0, "complete\n"), err
    assert not held & set(jt.calls(str(tmp_path / "calls-1.log")))


# ---- regressions from the attack on the first version -------------------------------------------------------


def _script(tmp_path: Path, body: str, *args: str, env: dict[str, str] | None = None) -> str:
    head = f"import sys\nsys.path.insert(0, {str(HERE)!r})\nsys.path.insert(0, {str(tmp_path)!r})\n"
    code = head + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_items_pickle_cannot_write_are_refused_not_compared_by_repr(tmp_path: Path) -> None:
    # A repr in place of the pickle let a changed item pass for the old one (a numpy array's repr elides its
    # middle; here a class whose repr is constant).
    class Job:
        def __init__(self, n: int) -> None:
            self.n = n

        def __repr__(self) -> str:
            return "Job"

    with (
        manycore.Pool(2, backend="thread") as pool,
        pytest.raises(
            JournalError, match=r"item #0 of the input \(.*Job\) cannot be written by the standard"
        ),
    ):
        pool.map(operator.attrgetter("n"), [Job(1), Job(2)], journal=tmp_path / "run.db")


def test_a_decorators_own_closure_counts(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with manycore.Pool(2) as pool:
        assert pool.map(jt.scaled(2)(jt.base), range(3), journal=db) == [2, 4, 6]
        with pytest.raises(JournalError, match=r"another version of journal_tasks\.base"):
            pool.map(jt.scaled(100)(jt.base), range(3), journal=db)


def test_map_and_starmap_do_not_share_a_journal(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with manycore.Pool(2) as pool:
        pool.map(jt.describe, [(1, 2)], journal=db)
        with pytest.raises(JournalError, match=r"written by a map \(each item one argument\), not a starmap"):
            pool.starmap(jt.describe, [(1, 2)], journal=db)


@pytest.mark.needs("fork")
def test_fork_workers_do_not_keep_the_journal_locked(tmp_path: Path) -> None:
    # A worker forked while a journal is open (here the replacement of one that exited) held its lock.
    db = tmp_path / "run.db"
    with manycore.Pool(2, start_method="fork") as pool:
        first = pool.map(jt.exit_on_3, range(8), on_error="return", journal=db)
        assert isinstance(first[3], manycore.WorkerLostError)
        again = pool.map(jt.exit_on_3, range(8), on_error="return", journal=db)
        assert [repr(r) for r in again] == [repr(r) for r in first]


def test_an_unfinished_journaled_imap_does_not_hang_the_exit(tmp_path: Path) -> None:
    body = """
    import manycore, journal_tasks as jt
    pool = manycore.Pool(1)
    it = pool.imap(jt.returns_exception, range(100), journal=sys.argv[1])
    for r in it:
        if r == 5:
            break
    print("left at", r)
    """
    assert _script(tmp_path, body, str(tmp_path / "run.db")) == "left at 5\n"
    assert _journal.read_status(tmp_path / "run.db").done >= 6  # what was taken was committed at exit


def test_fingerprints_do_not_follow_the_hash_seed_or_memory_addresses(tmp_path: Path) -> None:
    # A set literal compiles to a frozenset constant whose repr order follows PYTHONHASHSEED; a closure over a
    # local helper function once pickled to a repr with its address. Both refused every resume.
    body = """
    import manycore
    def classify(x):
        return x in {"apple", "banana", "cherry", "date", "elder"}
    def make_task(offset):
        def helper(x):
            return x + offset
        def task(x):
            return helper(x) * 2
        return task
    print(manycore.map(classify, ["apple", "kiwi"], workers=2, journal=sys.argv[1] + ".a"))
    print(manycore.map(make_task(1), range(3), workers=2, journal=sys.argv[1] + ".b"))
    """
    db = str(tmp_path / "run")
    for seed in ("1", "2", "3"):
        out = _script(tmp_path, body, db, env={"PYTHONHASHSEED": seed})
        assert out == "[True, False]\n[2, 4, 6]\n"


def test_a_callable_objects_call_method_counts(tmp_path: Path) -> None:
    (tmp_path / "scale.py").write_text(
        "class Scale:\n    def __init__(self, k): self.k = k\n    def __call__(self, x): return self.k * x\n"
    )
    body = """
    import manycore, scale
    try:
        print(manycore.map(scale.Scale(2), range(3), workers=2, journal=sys.argv[1]))
    except manycore.errors.JournalError as exc:
        print("refused:", exc)
    """
    db = str(tmp_path / "run.db")
    assert _script(tmp_path, body, db) == "[0, 2, 4]\n"
    (tmp_path / "scale.py").write_text(
        "class Scale:\n    def __init__(self, k): self.k = k\n    def __call__(self, x): return self.k + x\n"
    )
    assert "another version of scale.Scale" in _script(tmp_path, body, db)


def test_an_sqlite_database_of_the_users_is_not_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE users(name TEXT)")
    with pytest.raises(
        JournalError, match=r"an SQLite database but not a manycore journal \(it has tables users\)"
    ):
        manycore.map(abs, [1], workers=2, journal=db)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["users"]


def test_status_of_a_path_with_uri_characters(tmp_path: Path) -> None:
    for name in ("run #1.db", "a?b.db", "100%25.db"):
        manycore.map(abs, range(10), workers=2, journal=tmp_path / name)
        assert _journal.read_status(tmp_path / name).done == 10
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [
        "100%25.db",
        "a?b.db",
        "run #1.db",
    ]


def test_a_damaged_result_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    manycore.map(str, range(1000), workers=2, journal=db)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        start, blob = conn.execute("SELECT start, results FROM ranges LIMIT 1").fetchone()
        flipped = bytearray(blob)
        flipped[len(blob) // 2] ^= 0x01
        conn.execute("UPDATE ranges SET results = ? WHERE start = ?", (bytes(flipped), start))
    with pytest.raises(JournalError, match=r"is damaged .*fail their checksum.*delete it to start afresh"):
        manycore.map(str, range(1000), workers=2, journal=db)
