"""The "manycore" joblib backend: scikit-learn's n_jobs on manycore's pool, identical scores."""

from __future__ import annotations

import os
import signal
import time

import pytest

joblib = pytest.importorskip("joblib")
sklearn = pytest.importorskip("sklearn")

import manycore.joblib  # noqa: E402  (registers the backend)
from manycore.errors import WorkerLostError  # noqa: E402

import tasks  # noqa: E402
from proc_helpers import children, wait_no_new_children  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def kill_on_three(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_cross_val_score_identical_to_joblibs_default() -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000)
    # joblib's default backend (loky) keeps its workers and resource tracker alive by design, so the check
    # for leftover processes covers only what runs on manycore's backend, after this point.
    reference = cross_val_score(model, X, y, cv=5, n_jobs=2)
    before = children()
    with joblib.parallel_config(backend="manycore", n_jobs=2):
        scores = cross_val_score(model, X, y, cv=5)
    assert list(scores) == list(reference)
    assert wait_no_new_children(before) == set()


def test_parallel_results_and_order(no_leftover_processes: None) -> None:
    with joblib.parallel_config(backend="manycore", n_jobs=2):
        assert joblib.Parallel()(joblib.delayed(abs)(-x) for x in range(50)) == list(range(50))


def test_worker_crash_is_reported_for_its_task(no_leftover_processes: None) -> None:
    with joblib.parallel_config(backend="manycore", n_jobs=2), pytest.raises(WorkerLostError):
        joblib.Parallel(batch_size=1)(joblib.delayed(kill_on_three)(x) for x in range(6))


def test_register_is_idempotent() -> None:
    manycore.joblib.register()
    manycore.joblib.register()
    with joblib.parallel_config(backend="manycore", n_jobs=2):
        assert joblib.Parallel()(joblib.delayed(abs)(-1) for _ in range(2)) == [1, 1]


@pytest.mark.needs("fork", "forkserver")
def test_default_start_method_is_manycores_not_joblibs_context(no_leftover_processes: None) -> None:
    # joblib passes context=multiprocessing.get_context() to every backend (fork on Linux before 3.14); the
    # backend must not take it for the user's choice: a forked worker would inherit pytest, a fork-server one not.
    with joblib.parallel_config(backend="manycore", n_jobs=2):
        assert joblib.Parallel()(joblib.delayed(tasks.pytest_imported)() for _ in range(4)) == [False] * 4
    with joblib.parallel_config(backend="manycore", n_jobs=2, start_method="fork"):
        assert joblib.Parallel()(joblib.delayed(tasks.pytest_imported)() for _ in range(4)) == [True] * 4


def _inner_manycore_sum(n: int) -> int:
    import manycore.joblib  # noqa: F401  (registers the backend in the loky worker)

    with joblib.parallel_config(backend="manycore", n_jobs=2):
        return sum(joblib.Parallel()(joblib.delayed(abs)(-x) for x in range(n)))


def test_manycore_inside_a_loky_worker() -> None:
    # Inside a loky worker multiprocessing's context says "loky", a start method manycore does not have.
    assert joblib.Parallel(n_jobs=2, backend="loky")(
        joblib.delayed(_inner_manycore_sum)(n) for n in (3, 4)
    ) == [
        3,
        6,
    ]


@pytest.mark.parametrize("where", ["parallel_config", "Parallel"])
def test_initializer_given_to_joblib_runs_in_every_worker(where: str, no_leftover_processes: None) -> None:
    init = {"initializer": tasks.init_state, "initargs": ("ready",)}
    calls = (joblib.delayed(tasks.read_state)(i) for i in range(8))
    if where == "parallel_config":
        with joblib.parallel_config(backend="manycore", n_jobs=2, **init):
            results = joblib.Parallel(batch_size=1)(calls)
    else:
        results = joblib.Parallel(backend="manycore", n_jobs=2, batch_size=1, **init)(calls)
    assert results == ["ready"] * 8


def test_unknown_backend_option_is_named(no_leftover_processes: None) -> None:
    with (
        joblib.parallel_config(backend="manycore", n_jobs=2, max_workerz=3),
        pytest.raises(TypeError, match="max_workerz"),
    ):
        joblib.Parallel()(joblib.delayed(abs)(-1) for _ in range(2))


def test_terminate_resets_batch_statistics(no_leftover_processes: None) -> None:
    parallel = joblib.Parallel(n_jobs=2, backend="manycore")
    for _ in range(2):
        parallel(joblib.delayed(time.sleep)(0.001) for _ in range(300))
        backend = parallel._backend
        # joblib's own backends reset these in terminate(); stale ones would size the next call's batches.
        assert backend._effective_batch_size == backend._DEFAULT_EFFECTIVE_BATCH_SIZE
        assert backend._smoothed_batch_duration == backend._DEFAULT_SMOOTHED_BATCH_DURATION


def test_backend_is_known_in_its_own_workers(no_leftover_processes: None) -> None:
    # A fork-server or spawned worker starts without manycore.joblib imported, so a nested Parallel naming
    # backend="manycore" failed there with "Invalid backend: manycore".
    with joblib.parallel_config(backend="manycore", n_jobs=2):
        assert joblib.Parallel()(joblib.delayed(tasks.joblib_sum_on_manycore)(n) for n in (3, 4)) == [3, 6]
