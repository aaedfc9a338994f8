"""The public surface: complete, sorted, light to import, typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import manycore


def test_all_is_sorted_and_resolvable() -> None:
    assert list(manycore.__all__) == sorted(manycore.__all__)
    for name in manycore.__all__:
        assert getattr(manycore, name) is not None


def test_public_classes_claim_the_manycore_module() -> None:
    for name in ("Pool", "Executor", "AsyncResult", "IMapIterator", "map", "imap"):
        assert getattr(manycore, name).__module__ == "manycore"


def test_errors_subclass_the_standard_exceptions() -> None:
    import multiprocessing
    import multiprocessing.pool
    from concurrent.futures.process import BrokenProcessPool

    from manycore import errors

    assert issubclass(errors.WorkerLostError, BrokenProcessPool)
    assert issubclass(errors.TaskTimeoutError, multiprocessing.TimeoutError)
    assert issubclass(errors.SerializationError, multiprocessing.pool.MaybeEncodingError)
    assert issubclass(errors.PoolClosedError, ValueError)
    for name in ("WorkerLostError", "TaskTimeoutError", "SerializationError", "InitializerError"):
        assert issubclass(getattr(errors, name), errors.ManycoreError)


def test_import_is_light() -> None:
    code = (
        "import sys, manycore; heavy = [m for m in ('numpy', 'dask', 'ray', 'joblib', 'tqdm', "
        "'cloudpickle', 'multiprocessing.pool') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.needs("forkserver")
def test_fork_server_starts_before_cloudpickle_is_imported() -> None:
    # Pool() starts the fork server before anything imports cloudpickle (W6), recorded at the moment the
    # server's interpreter is launched. A task that pickles by name (abs) does not import it either; one that
    # needs it (a lambda) does.
    code = (
        "import os, subprocess, sys, manycore\n"
        "seen = []\n"
        "popen_init = subprocess.Popen.__init__\n"
        "def record(self, *args, **kwargs):\n"
        "    seen.append('cloudpickle' in sys.modules)\n"
        "    popen_init(self, *args, **kwargs)\n"
        "subprocess.Popen.__init__ = record\n"
        "os.register_at_fork(before=lambda: seen.append('cloudpickle' in sys.modules))\n"
        "with manycore.Pool(2) as pool:\n"
        "    print(seen, pool.apply(abs, (-3,)), 'cloudpickle' in sys.modules)\n"
        "    print(pool.apply(lambda: 4), 'cloudpickle' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[False]", "3", "False", "4", "True"]


@pytest.mark.needs("forkserver")
@pytest.mark.parametrize("face", ["Pool(2)", "Executor(2)"])
def test_fork_server_boots_while_the_scheduler_is_imported(face: str) -> None:
    # The lookup of Pool/Executor imports the options and the backend registry only; the call starts the fork
    # server, then imports the scheduler and the result objects (W6: ~15 ms each, side by side). Recorded when
    # the server's interpreter is launched. On the commit before, every one of these was imported already.
    code = (
        "import subprocess, sys, manycore\n"
        "HEAVY = ('manycore._process._supervisor', 'manycore._results', 'manycore._imap', "
        "'concurrent.futures.process', 'manycore.errors')\n"
        "_ = (manycore.Pool, manycore.Executor)\n"
        "print(sorted(m for m in HEAVY if m in sys.modules))\n"
        "seen = []\n"
        "popen_init = subprocess.Popen.__init__\n"
        "def record(self, *args, **kwargs):\n"
        "    seen.append(sorted(m for m in HEAVY if m in sys.modules))\n"
        "    popen_init(self, *args, **kwargs)\n"
        "subprocess.Popen.__init__ = record\n"
        f"with manycore.{face} as pool:\n"
        "    print(seen, sorted(m for m in HEAVY if m in sys.modules) == sorted(HEAVY))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "[[]] True"]


def test_an_interrupted_first_pool_leaves_no_fork_server() -> None:
    # Ctrl-C while the first Pool() imports the scheduler, after it has started its fork server: the server
    # is closed, and the next Pool() works. The interrupt is raised by an import hook at the import of
    # manycore._results (a real KeyboardInterrupt in the constructor, at the point the user would press it).
    code = (
        "import os, sys, time, psutil, manycore\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'manycore._results':\n"
        "            sys.meta_path.remove(self)\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "try:\n"
        "    manycore.Pool(2)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
        "deadline = time.monotonic() + 10\n"
        "while psutil.Process().children(recursive=True) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print(psutil.Process().children(recursive=True))\n"
        "with manycore.Pool(2) as pool:\n"
        "    print(pool.map(abs, [-1, -2]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["interrupted", "[]", "[1, 2]"]


def test_a_process_backend_subclass_with_the_older_scheduler_signature() -> None:
    # A subclass overriding scheduler(self, options) (the documented signature before Backend.prelaunch) got the
    # prelaunched fork server as an extra argument: TypeError. It now gets no prelaunch, and works.
    from manycore import backends

    built = []

    class Logged(backends.Process):
        def scheduler(self, options: Any) -> Any:  # type: ignore[override]
            built.append(options.processes)
            return super().scheduler(options)

    backends.register("logged-test", Logged)
    with manycore.Pool(2, backend="logged-test") as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
    assert built == [2]


def test_package_is_typed() -> None:
    assert (Path(manycore.__file__).parent / "py.typed").exists()
