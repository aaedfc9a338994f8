"""The fork server is a fresh interpreter, whatever the program that makes the pool holds: workers die with the
parent, nothing of the parent's descriptors, signal handlers, locks, random state or redirected streams
reaches them, stdin is /dev/null, buffered output is not written twice.

A fork server forked from a single-threaded program (no exec) was tried for cold start (W6) and taken out: an
audit found it gave every worker the program's random-generator state, a lock the program held, its
redirected stdout and its stdin buffer (test_the_programs_state_does_not_reach_the_workers). Every case runs
a user's script in a fresh interpreter, where the program is single-threaded, as most are.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from proc_helpers import gone, running

pytestmark = pytest.mark.timeout(90)


HERE = os.path.dirname(os.path.abspath(__file__))

# Which fork server the script's pool got: the forked one has the script's own command line, the exec'd one
# runs ``python -c "...from manycore._zygote import main..."``.
REPORT_SERVER = """
import psutil as _psutil
(_server,) = _psutil.Process().children()
print("forked" if _server.cmdline() == _psutil.Process().cmdline() else "exec'd", flush=True)
"""


def run_script(
    code: str, *, cwd: str | None = None, pass_fds: tuple[int, ...] = (), timeout: float = 60, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "PYTHONUNBUFFERED")}
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        input=stdin,  # stdin a pipe: the workers' must be /dev/null all the same
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        pass_fds=pass_fds,
    )


POOL_AND_REPORT = """
import manycore
from tasks import square
with manycore.Pool(2) as pool:
    assert pool.map(square, range(10)) == [x * x for x in range(10)]
    REPORT
"""


def pool_script(setup: str) -> str:
    body = POOL_AND_REPORT.replace("    REPORT", textwrap.indent(REPORT_SERVER, "    "))
    return textwrap.dedent(setup) + body


@pytest.mark.parametrize(
    "setup",
    [
        "",
        "import threading, time\nthreading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n",
        "import atexit\nlog = open(__import__('os').devnull, 'w')\natexit.register(log.close)\n",
    ],
    ids=["single-threaded", "thread", "open-file"],
)
def test_the_fork_server_is_a_fresh_interpreter(setup: str) -> None:
    proc = run_script(pool_script(setup))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "exec'd"
    assert proc.stderr == ""


def test_the_programs_state_does_not_reach_the_workers(tmp_path: Path) -> None:
    """A module's random generator, a lock held while the pool is made, stdout redirected then, and the
    parent's stdin buffer: a worker that copied them would draw the same numbers as the other worker,
    deadlock, print into a StringIO of its own, and read the parent's input."""
    (tmp_path / "statemod.py").write_text(
        "import random, threading\n"
        "RNG = random.Random()\n"
        "LOCK = threading.Lock()\n"
        "def draw(_):\n"
        "    with LOCK:\n"
        "        return RNG.random()\n"
    )
    proc = run_script(
        f"""
        import contextlib, io, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import manycore, statemod
        assert sys.stdin.readline() == "first\\n"  # the rest of the input is in the parent's buffer now

        def rest_of_stdin(_):
            import sys
            return sys.stdin.read()

        def shout(_):
            print("from a worker", flush=True)

        with statemod.LOCK, contextlib.redirect_stdout(io.StringIO()):
            pool = manycore.Pool(2, task_timeout=20)
        with pool:
            print(len(set(pool.map(statemod.draw, range(8), chunksize=1))), flush=True)
            print(pool.map(rest_of_stdin, range(2), chunksize=1), flush=True)
            pool.map(shout, range(1))
        """,
        stdin="first\nsecond\nthird\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["8", "['', '']", "from a worker"]


def test_a_pool_made_while_a_module_is_imported(tmp_path: Path) -> None:
    # The pool is made by a module's top-level code: the module is half-imported, and a worker forked from
    # this state would find it so.
    (tmp_path / "makes_a_pool.py").write_text(pool_script(""))
    proc = run_script(f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import makes_a_pool")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "exec'd"


def test_an_inherited_descriptor_does_not_reach_the_fork_server() -> None:
    # A pipe this test holds the read end of: the script inherits the write end (as from a shell or a CI
    # runner, which is no reason to exec). Once the script closes it, the read end must see EOF while the fork
    # server and its workers still run: they must not hold a copy.
    r, w = os.pipe()
    code = textwrap.dedent(
        f"""
        import os, time
        import manycore
        from tasks import square
        with manycore.Pool(2) as pool:
            assert pool.map(square, range(10)) == [x * x for x in range(10)]
            os.close({w})
            print("closed", flush=True)
            time.sleep(3)
            {textwrap.indent(REPORT_SERVER, "            ").strip()}
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-W", "error", "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=(w,),
            env=env,
        )
    finally:
        os.close(w)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "closed"
        os.set_blocking(r, False)
        deadline = time.monotonic() + 2.5
        eof = False
        while not eof and time.monotonic() < deadline:
            try:
                eof = os.read(r, 1) == b""
            except BlockingIOError:
                time.sleep(0.01)
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert eof, "a fork server or worker kept the script's inherited pipe open"
    assert proc.returncode == 0, err
    assert out.strip() == "exec'd"


def test_workers_have_default_handlers_devnull_stdin_and_no_repeated_output() -> None:
    proc = run_script(
        """
        import os, signal, sys
        import manycore
        from tasks import square

        signal.signal(signal.SIGTERM, lambda *_: print("the parent's handler ran in a worker", flush=True))
        sys.stdout.write("printed once")  # buffered, not flushed: a fork must not copy it to be written again

        def probe(_):
            import os, signal, sys
            leaked = []
            for fd in map(int, os.listdir("/proc/self/fd")):
                try:
                    if fd > 2 and os.get_inheritable(fd):
                        leaked.append(fd)
                except OSError:  # the listing's own descriptor, closed by now
                    pass
            return (signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, os.readlink("/proc/self/fd/0"), leaked)

        with manycore.Pool(2) as pool:
            print()
            print(pool.map(probe, range(2), chunksize=1))
            REPORT
        """.replace("            REPORT", textwrap.indent(REPORT_SERVER, "            "))
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "printed once",
        "[(True, '/dev/null', []), (True, '/dev/null', [])]",
        "exec'd",
    ]
    assert proc.stderr == ""


@pytest.mark.parametrize(
    "setup",
    ["", "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"],
    ids=["single-threaded", "thread"],
)
def test_workers_and_fork_server_die_with_a_sigkilled_parent(setup: str) -> None:
    code = textwrap.dedent(setup) + textwrap.dedent(
        """
        import os, time
        import psutil
        import manycore
        from tasks import square
        pool = manycore.Pool(2)
        assert pool.map(square, range(4)) == [0, 1, 4, 9]
        print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            pids = [int(p) for p in proc.stdout.readline().split()]
            assert len(pids) == 3  # the fork server and two workers
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert gone(set(pids), 10), (
        f"processes outlived their SIGKILLed parent: {[p for p in pids if running(p)]}"
    )


# ---- the spare fork server: started when the program first looks up manycore.Pool (or Executor, map, imap),
# so that it boots while the pool's code imports (W6); the first pool adopts it only if it would have started
# the same one.

SPARE = """
import os, psutil, manycore
from tasks import pid
Pool = manycore.Pool  # the lookup starts the spare fork server
(spare,) = psutil.Process().children()
"""

WORKERS_VIEW = """
def view(_):
    import os, resource
    return os.environ.get("MANYCORE_TEST_MARK"), os.getcwd(), resource.getrlimit(resource.RLIMIT_NOFILE)[0]

with Pool(KWARGS) as pool:
    parents = {psutil.Process(p).ppid() for p in pool.map(pid, range(8), chunksize=1)}
    seen = set(pool.map(view, range(4), chunksize=1))
print("adopted" if parents == {spare.pid} else "not adopted", flush=True)
print(seen, flush=True)
print("spare running" if spare.is_running() and spare.status() != psutil.STATUS_ZOMBIE else "spare gone")
"""


def spare_script(change: str, kwargs: str) -> str:
    return SPARE + textwrap.dedent(change) + WORKERS_VIEW.replace("KWARGS", kwargs)


def test_the_first_pool_adopts_the_spare_fork_server() -> None:
    proc = run_script(spare_script("", "processes=2"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "adopted"
    assert lines[1] == repr(
        {(None, os.getcwd(), __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0])}
    )
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("change", "kwargs", "expected"),
    [
        (
            'os.environ["MANYCORE_TEST_MARK"] = "set after the lookup"\n',
            "processes=2",
            "'set after the lookup'",
        ),
        ("os.chdir(TMP)\n", "processes=2", "TMP"),
        (
            "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (200, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n",
            "processes=2",
            "200",
        ),
        ("os.dup2(os.open(os.devnull, os.O_WRONLY), 2)\n", "processes=2", None),
        ("os.nice(1)\n", "processes=2", None),
        ("import signal\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\n", "processes=2", None),
        ("", "processes=2, blas_threads=3", None),
        ("", "processes=2, start_method='fork'", None),
        ("", "processes=2, start_method='spawn'", None),
    ],
    ids=["environment", "cwd", "rlimit", "stderr", "nice", "sighup-ignored", "blas-threads", "fork", "spawn"],
)
def test_a_first_pool_unlike_the_spare_stops_it(
    change: str, kwargs: str, expected: str | None, tmp_path: Path
) -> None:
    """What the program changed between the lookup and the pool reaches the workers, as without a spare: the
    pool starts its own fork server (or none), and the spare ends."""
    script = spare_script(change.replace("TMP", repr(str(tmp_path))), kwargs)
    proc = run_script(script)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "not adopted", proc.stdout
    if expected is not None:
        assert expected.replace("TMP", repr(str(tmp_path))) in lines[1], lines[1]
    assert lines[2] == "spare gone"
    assert proc.stderr == ""


def test_an_unused_spare_ends_with_the_program() -> None:
    """A program that looks up manycore.Pool and makes none: the spare is stopped at exit, with no warning
    (the script runs under -W error); killed with its parent, it ends as well."""
    proc = run_script(SPARE + "print(spare.pid)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert gone({int(proc.stdout)}, timeout=10)
    child = subprocess.Popen(
        [sys.executable, "-c", SPARE + "print(spare.pid, flush=True)\nimport time\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])},
    )
    with child:
        assert child.stdout is not None
        spare = int(child.stdout.readline())
        child.kill()
    assert gone({spare}, timeout=10), "the spare fork server outlived its SIGKILLed parent"


def test_a_forked_child_does_not_keep_the_spare_alive() -> None:
    """The program forks after the lookup: the spare must still end with the program, not with the child."""
    proc = run_script(
        SPARE
        + """
child = os.fork()
if child == 0:
    os.close(1); os.close(2)
    import time
    time.sleep(20)
    os._exit(0)
print(spare.pid, child, flush=True)
"""
    )
    assert proc.returncode == 0, proc.stderr
    spare, child = map(int, proc.stdout.split())
    try:
        assert gone({spare}, timeout=10), "a forked child kept the spare fork server alive"
        assert running(child)
    finally:
        os.kill(child, signal.SIGKILL)
