"""The options objects and the backends' capabilities, without processes: defaults, validation errors that name
the parameter, merging of a call's overrides, and refusal of what a backend cannot honour."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

import manycore
from manycore import backends
from manycore._options import DEFAULT_CALL, CallOptions, PoolOptions
from manycore._shm import DEFAULT_THRESHOLD
from manycore.backends import Backend, Capabilities

from tasks import square

# ---- defaults --------------------------------------------------------------------------------------------


def test_call_defaults_are_one_per_option() -> None:
    call = CallOptions()
    assert call.as_dict() == {
        "chunksize": None,  # automatic
        "on_error": "raise",
        "retries": 0,
        "task_timeout": None,
        "progress": False,
    }
    assert call == DEFAULT_CALL


def test_pool_defaults() -> None:
    options = PoolOptions()
    assert options.processes is None  # the backend's own count
    assert options.backend == "process"
    assert options.initializer is None and options.initargs == ()
    assert options.max_tasks_per_worker is None and options.max_memory_per_worker is None
    assert options.start_method is None  # the platform's default, chosen by the process backend
    assert options.zero_copy_threshold == DEFAULT_THRESHOLD
    assert options.blas_threads is None
    assert options.defaults == DEFAULT_CALL
    assert options.given() == {}


@pytest.mark.parametrize("spelling", [None, "auto"])
def test_auto_and_none_are_one_chunksize(spelling: object) -> None:
    assert CallOptions(chunksize=spelling).chunksize is None  # type: ignore[arg-type]


def test_none_backend_is_the_process_backend() -> None:
    assert PoolOptions(backend=None).backend == "process"


def test_every_signature_has_the_same_chunksize_default() -> None:
    import inspect

    methods = [
        manycore.Pool.map,
        manycore.Pool.map_async,
        manycore.Pool.starmap,
        manycore.Pool.starmap_async,
        manycore.Pool.imap,
        manycore.Pool.imap_unordered,
        manycore.Pool.istarmap,
        manycore.Executor.map,
        manycore.map,
        manycore.imap,
    ]
    defaults = {m.__qualname__: inspect.signature(m).parameters["chunksize"].default for m in methods}
    assert set(defaults.values()) == {None}, defaults


# ---- immutability ----------------------------------------------------------------------------------------


def test_options_are_immutable() -> None:
    call = CallOptions(retries=2)
    with pytest.raises(AttributeError, match="immutable"):
        call.retries = 3  # type: ignore[misc]
    options = PoolOptions(processes=2)
    with pytest.raises(AttributeError, match="immutable"):
        options.processes = 3  # type: ignore[misc]
    assert options.replace(processes=3).processes == 3 and options.processes == 2


def test_equality_and_repr() -> None:
    assert CallOptions(retries=1) == CallOptions(retries=1) != CallOptions(retries=2)
    assert CallOptions() != PoolOptions()
    assert repr(CallOptions(retries=1)) == (
        "CallOptions(chunksize=None, on_error='raise', retries=1, task_timeout=None, progress=False)"
    )


# ---- validation: each error names the parameter ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"chunksize": 0}, ValueError, "chunksize"),
        ({"chunksize": 1.5}, TypeError, "chunksize"),
        ({"chunksize": True}, TypeError, "chunksize"),
        ({"chunksize": "10"}, TypeError, "chunksize"),
        ({"on_error": "ignore"}, ValueError, "on_error"),
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": 1.0}, ValueError, "retries"),
        ({"task_timeout": 0}, ValueError, "task_timeout"),
        ({"task_timeout": "1"}, ValueError, "task_timeout"),
        ({"progress": "sometimes"}, ValueError, "progress"),
    ],
)
def test_call_option_errors_name_the_parameter(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=f"^{message} must be"):
        CallOptions(**kwargs)


def test_valid_call_options_are_normalized() -> None:
    call = CallOptions(chunksize=7, on_error="return", retries=2, task_timeout=3, progress="always")
    assert call.as_dict() == {
        "chunksize": 7,
        "on_error": "return",
        "retries": 2,
        "task_timeout": 3.0,
        "progress": "always",
    }
    assert isinstance(call.task_timeout, float)
    assert CallOptions(progress=None).progress is False


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"processes": 0}, ValueError, "processes must be at least 1"),
        ({"processes": "2"}, TypeError, "processes must be an int"),
        ({"initializer": 42}, TypeError, "initializer must be a callable"),
        ({"initargs": 5}, TypeError, "initargs must be a tuple"),
        ({"initargs": "ab"}, TypeError, "initargs must be a tuple"),
        ({"max_tasks_per_worker": 0}, ValueError, "max_tasks_per_worker must be"),
        ({"max_memory_per_worker": -1}, ValueError, "max_memory_per_worker must be"),
        ({"start_method": "thread"}, ValueError, "start_method must be one of forkserver, fork, spawn"),
        ({"zero_copy_threshold": 0}, ValueError, "zero_copy_threshold must be"),
        ({"blas_threads": 0}, ValueError, "blas_threads must be"),
        ({"defaults": {"retries": 1}}, TypeError, "defaults must be a CallOptions"),
    ],
)
def test_pool_option_errors_name_the_parameter(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=f"^{message}"):
        PoolOptions(**kwargs)


def test_errors_name_the_parameter_as_the_user_passed_it() -> None:
    """Executor's max_workers and max_tasks_per_child are PoolOptions' processes and max_tasks_per_worker."""
    names = {"processes": "max_workers", "max_tasks_per_worker": "max_tasks_per_child"}
    with pytest.raises(ValueError, match=r"^max_workers must be at least 1"):
        PoolOptions(0, names=names)
    with pytest.raises(ValueError, match=r"^max_tasks_per_child must be"):
        PoolOptions(max_tasks_per_worker=0, names=names)
    with pytest.raises(ValueError, match=r"^maxtasksperchild must be"):
        manycore.Pool(maxtasksperchild=0)
    with pytest.raises(ValueError, match=r"^max_tasks_per_child must be"):
        manycore.Executor(max_tasks_per_child=0)
    with pytest.raises(TypeError, match=r"^max_workers must be an int"):
        manycore.Executor(max_workers="2")  # type: ignore[arg-type]


def test_a_context_names_the_start_method() -> None:
    from manycore._options import context_start_method

    assert context_start_method(None, multiprocessing.get_context("spawn")) == "spawn"
    assert (
        context_start_method("fork", multiprocessing.get_context("spawn")) == "fork"
    )  # the explicit one wins
    assert context_start_method(None, None) is None


def test_pool_validates_before_starting_anything() -> None:
    """A bad option is refused before any worker (or fork server) starts: nothing to clean up."""
    with pytest.raises(ValueError, match="blas_threads"):
        manycore.Pool(2, blas_threads=0)
    with pytest.raises(ValueError, match=r"^backend must be one of"):
        manycore.Pool(2, backend="gpu")


# ---- merging a call's overrides --------------------------------------------------------------------------


def test_overrides_win_and_the_rest_is_the_pools() -> None:
    pool_defaults = CallOptions(retries=2, task_timeout=5, on_error="return")
    call = pool_defaults.merge({"retries": 0, "chunksize": 4})
    assert call == CallOptions(retries=0, task_timeout=5, on_error="return", chunksize=4)
    assert pool_defaults.retries == 2  # unchanged
    assert pool_defaults.merge({}) is pool_defaults


def test_an_override_can_reset_a_pool_default_to_none() -> None:
    assert CallOptions(task_timeout=5).merge({"task_timeout": None}).task_timeout is None


def test_merged_overrides_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^on_error must be"):
        DEFAULT_CALL.merge({"on_error": "ignore"})
    with pytest.raises(TypeError, match="chunksize"):
        DEFAULT_CALL.merge({"chunksize": 2.5})


def test_unknown_overrides_are_a_type_error_naming_them() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*colour, size"):
        DEFAULT_CALL.merge({"size": 1, "colour": "red"})
    with pytest.raises(TypeError, match="progress"):
        DEFAULT_CALL.merge({"progress": True}, frozenset({"retries"}))


# ---- capabilities: refusal when the pool is built ---------------------------------------------------------


def test_the_registry_knows_every_backend_and_process_supports_everything() -> None:
    process = backends.capabilities("process")
    assert all(getattr(process, name) for name in Capabilities.__slots__)
    for name in ("thread", "dask", "ray"):
        caps = backends.capabilities(name)
        assert not caps.task_timeout and not caps.max_tasks_per_worker and not caps.start_method
        assert backends.backend_class(name).name == name
    assert backends.capabilities("thread").initializer and not backends.capabilities("dask").initializer
    assert backends.Thread.capabilities is backends.capabilities("thread")


def test_given_lists_what_a_backend_must_honour() -> None:
    options = PoolOptions(
        initializer=print, max_tasks_per_worker=3, start_method="spawn", defaults=CallOptions(task_timeout=2)
    )
    assert options.given() == {
        "initializer": print,
        "max_tasks_per_worker": 3,
        "start_method": "spawn",
        "task_timeout": 2.0,
    }


@pytest.mark.parametrize(
    ("backend", "kwargs", "message"),
    [
        (
            "thread",
            {"defaults": CallOptions(task_timeout=1)},
            "task_timeout is not supported on the thread backend",
        ),
        (
            "thread",
            {"max_tasks_per_worker": 2},
            "max_tasks_per_worker is not supported on the thread backend",
        ),
        ("thread", {"start_method": "spawn"}, "start_method is not supported on the thread backend"),
        ("dask", {"initializer": print}, "initializer is not supported on the dask backend"),
        (
            "dask",
            {"max_memory_per_worker": 1 << 30},
            "max_memory_per_worker is not supported on the dask backend",
        ),
        (
            "ray",
            {"defaults": CallOptions(task_timeout=1)},
            "task_timeout is not supported on the ray backend",
        ),
    ],
)
def test_unsupported_options_are_refused_by_the_capabilities(
    backend: str, kwargs: dict[str, Any], message: str
) -> None:
    """Refused before the backend is made: no thread pool, no cluster connection."""
    with pytest.raises(ValueError, match=f"^{message}"):
        backends.resolve(PoolOptions(backend=backend, **kwargs))


def test_refusal_names_the_option_as_passed() -> None:
    options = PoolOptions(
        backend="dask", max_tasks_per_worker=2, names={"max_tasks_per_worker": "maxtasksperchild"}
    )
    with pytest.raises(ValueError, match=r"^maxtasksperchild is not supported on the dask backend"):
        backends.resolve(options)


def test_a_thread_pool_with_task_timeout_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="task_timeout is not supported on the thread backend"):
        manycore.Pool(2, backend="thread", task_timeout=1)
    with pytest.raises(ValueError, match="task_timeout is not supported on the thread backend"):
        manycore.Executor(2, backend="thread", task_timeout=1)
    with pytest.raises(ValueError, match=r"^context is not supported on the thread backend"):
        manycore.Pool(2, backend="thread", context=multiprocessing.get_context("spawn"))


def test_a_call_asking_what_the_backend_cannot_do_is_refused() -> None:
    with manycore.Pool(2, backend="thread") as pool:
        with pytest.raises(ValueError, match="task_timeout is not supported on the thread backend"):
            pool.map(square, [1], task_timeout=1)
        with pytest.raises(ValueError, match="task_timeout is not supported on the thread backend"):
            pool.imap(square, [1], task_timeout=1)
        assert pool.map(square, [1, 2]) == [1, 4]  # still usable


def test_a_backend_object_does_not_drop_the_pools_initializer() -> None:
    """An engine object takes its initializer in its own constructor: one given to the Pool is refused, not
    silently ignored (it was, for a Thread object)."""
    with pytest.raises(ValueError, match=r"pass the initializer to it: Thread\(initializer=...\)"):
        manycore.Pool(backend=backends.Thread(2), initializer=print)


class _Everything(Backend):
    name = "everything"
    capabilities = Capabilities(task_timeout=True, initializer=True, max_tasks_per_worker=True)


def test_a_registered_backend_is_resolved_by_name_with_its_capabilities() -> None:
    backends.register("everything-test", _Everything)
    try:
        options = PoolOptions(backend="everything-test", max_tasks_per_worker=2)
        assert isinstance(backends.resolve(options), _Everything)
        with pytest.raises(ValueError, match=r"^start_method is not supported on the everything backend"):
            backends.resolve(options.replace(start_method="spawn"))
    finally:
        backends._REGISTRY.pop("everything-test")
    with pytest.raises(TypeError, match="Backend subclass"):
        backends.register("bad", object)  # type: ignore[arg-type]


def test_options_and_the_registry_import_no_scheduler_and_no_engine() -> None:
    """Resolving the process backend loads neither its scheduler nor any engine, and the capabilities of every
    backend load no dask or ray: a fresh interpreter, since this one has imported them all by now."""
    import subprocess
    import sys

    code = (
        "import sys, manycore\n"
        "from manycore import backends\n"
        "from manycore._options import PoolOptions\n"
        "backends.resolve(PoolOptions())\n"
        "print(sorted({'manycore._process', 'manycore._engine'} & set(sys.modules)))\n"
        "for name in ('process', 'thread', 'dask', 'ray'):\n"
        "    backends.capabilities(name)\n"
        "print(sorted({'manycore._process', 'dask', 'distributed', 'ray'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["[]", "[]"], out.stdout + out.stderr
