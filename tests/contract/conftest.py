"""One contract suite, every backend: the ``backend`` fixture yields a Pool factory for each engine.

Real engines: a session-scoped Dask LocalCluster (2 worker processes, loopback only) and, where ray is
installed, a session-scoped local Ray runtime (2 CPUs, no dashboard, its files in a temporary directory).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import manycore

BACKENDS = ["process", "thread", "dask", "ray"]


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    import dask

    # Dask's scratch space (spill files, lock files) would otherwise stay behind in /tmp/dask-scratch-space:
    # workers, nanny and scheduler all take it from this setting.
    tmp = tempfile.mkdtemp(prefix="manycore-dask-")
    try:
        with (
            dask.config.set({"temporary-directory": tmp}),
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed for this Python (pip install manycore[ray])")
    # Loopback-only, throw-away runtime: no authentication token (Ray would write one to ~/.ray).
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    # Keep every file Ray writes (sockets, logs, session data) in one temporary directory, removed after.
    tmp = tempfile.mkdtemp(prefix="manycore-ray-")
    here = os.path.dirname(__file__)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",  # loopback only
        _temp_dir=tmp,
        log_to_driver=False,
        configure_logging=False,
        # Ray's workers do not inherit the test runner's sys.path: make the test task modules importable.
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([here, os.path.dirname(here)])}},
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def _dask_client_running() -> bool:
    import distributed

    return bool(distributed.get_client().status == "running")


def _ray_running() -> bool:
    import ray

    return bool(ray.is_initialized())


@pytest.fixture(params=BACKENDS)
def make_pool(request: pytest.FixtureRequest) -> Callable[..., manycore.Pool]:
    """A Pool factory for one backend. The tests read what to expect from its capabilities (``caps``), never
    from its name; only this fixture, which sets each engine up, knows them by name."""
    name = request.param
    cluster_running: Callable[[], bool] | None = None
    if name == "dask":
        request.getfixturevalue("dask_client")
        cluster_running = _dask_client_running
    if name == "ray":
        request.getfixturevalue("ray_runtime")
        cluster_running = _ray_running

    def make(**options: Any) -> manycore.Pool:
        options.setdefault("processes", 2)  # Dask and Ray take their slots from the cluster (2 here)
        return manycore.Pool(backend=name, **options)

    make.backend = name  # type: ignore[attr-defined]
    make.cluster_running = cluster_running  # type: ignore[attr-defined]  # the user's cluster, if any
    return make


@pytest.fixture
def backend_name(make_pool: Callable[..., manycore.Pool]) -> str:
    return str(make_pool.backend)  # type: ignore[attr-defined]


@pytest.fixture
def caps(backend_name: str) -> manycore.backends.Capabilities:
    """What the backend under test declares it can do."""
    return manycore.backends.capabilities(backend_name)


os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report attempts (and no file for them)
