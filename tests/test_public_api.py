"""The public surface: complete, sorted, light to import, typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_package_is_typed() -> None:
    assert (Path(manycore.__file__).parent / "py.typed").exists()
