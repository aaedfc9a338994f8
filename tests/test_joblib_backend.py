"""The "manycore" joblib backend: scikit-learn's n_jobs on manycore's pool, identical scores."""

from __future__ import annotations

import os
import signal

import pytest

joblib = pytest.importorskip("joblib")
sklearn = pytest.importorskip("sklearn")

import manycore.joblib  # noqa: E402  (registers the backend)
from manycore.errors import WorkerLostError  # noqa: E402

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
