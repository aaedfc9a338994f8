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

pytestmark = [pytest.mark.timeout(90), pytest.mark.needs("forkserver")]


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


def test_looking_up_the_pool_starts_nothing() -> None:
    """A fork server started ahead of the first pool (at the lookup of manycore.Pool, while the pool's code
    imports: faster cold start) was built and taken out: it kept the process state of the lookup (a root
    program that dropped privileges then got workers running as root; the signal mask, process group and
    session reached the workers) and held the program's stdout. The pool that uses a fork server starts it."""
    code = (
        "import os, psutil, manycore\n"
        "before = len(os.listdir('/proc/self/fd'))\n"
        "_ = (manycore.Pool, manycore.Executor, manycore.map, manycore.imap)\n"
        "print(psutil.Process().children(), len(os.listdir('/proc/self/fd')) - before, flush=True)\n"
        "with manycore.Pool(2) as pool:\n"
        "    assert pool.map(abs, [-1]) == [1]\n"
    )
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[] 0\n"
