"""The parent's framed pickling (``_serialize.dumps_frames``): the same bytes as ``dumps``, in parts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from manycore._serialize import dumps, dumps_frames, loads

from proc_helpers import python_output


def many_small_items() -> tuple[int, list[bytes]]:
    """A W7-like chunk: a thousand distinct 1 KiB objects, so the pickler writes many frames."""
    return 7, [bytes([k % 256]) * 1024 for k in range(1000)]


@pytest.mark.parametrize(
    "obj",
    [
        many_small_items(),
        (0, [1, "two", 3.0]),
        bytearray(b"y" * (1 << 20)),  # large: the pickler hands the object itself to write()
        np.arange(300_000, dtype=np.float64).reshape(600, 500),  # in band, the pickler writes a PickleBuffer
        np.asfortranarray(np.arange(300_000, dtype=np.float64).reshape(600, 500)),
        lambda x: x + 1,
    ],
    ids=[
        "1000 KiB items",
        "small tuple",
        "large bytearray",
        "C array",
        "F array",
        "lambda",
    ],
)
def test_frames_join_to_the_same_pickle_as_dumps(obj: object) -> None:
    frames = dumps_frames(obj)
    assert all(type(f) is bytes for f in frames)
    assert b"".join(frames) == dumps(obj)


def test_a_long_payload_comes_in_several_frames_that_unpickle_to_the_input() -> None:
    obj = many_small_items()
    frames = dumps_frames(obj)
    assert len(frames) > 4  # about 1 MiB in frames of about 64 KiB: no single joined block
    assert loads(b"".join(frames)) == obj


def test_the_payload_does_not_follow_later_changes_to_an_in_band_buffer() -> None:
    """A chunk may be sent again after a worker dies: its payload must hold the values pickled, not a view."""
    data = bytearray(b"a" * (1 << 20))
    arr = np.zeros(200_000)
    frames = dumps_frames((data, pickle.PickleBuffer(arr)))
    data[:] = b"b" * len(data)
    arr[:] = 1.0
    restored_data, restored = loads(b"".join(frames))
    assert bytes(restored_data) == b"a" * (1 << 20)
    assert not np.asarray(restored).any()


# ---- before cloudpickle is needed: the standard pickler, for what it pickles as cloudpickle does ------------

PLAIN_SCRIPT = r"""
import io, sys
import manycore._serialize as S

objs = {
    "data": (3, [1, -2.5, "s", b"b", None, True, {"k": (1, 2)}, {3}, frozenset({4}), bytearray(b"ab")]),
    "function by name": (S.loads, (), {}),
    "builtin": (abs, (1,), {}),
    "class": (int, sorted),
    "nested class": (__import__("collections").OrderedDict,),
    "range": (0, range(10, 20)),  # a map over a range sends slices of it
    "slice, complex": [slice(1, 9, 2), 1 + 2j],
}
frames = {name: b"".join(S.dumps_frames(obj)) for name, obj in objs.items()}
print("cloudpickle loaded after plain payloads:", "cloudpickle" in sys.modules)
import cloudpickle
for name, obj in objs.items():
    print(name, frames[name] == cloudpickle.dumps(obj, protocol=5))
"""


def test_plain_payloads_pickle_as_cloudpickle_would_without_importing_it() -> None:
    """Built-in data and functions or classes importable by name: the same bytes as cloudpickle's, and
    cloudpickle (~15 ms to import, W6) stays unloaded."""
    out = python_output(PLAIN_SCRIPT)
    assert out.splitlines() == [
        "cloudpickle loaded after plain payloads: False",
        "data True",
        "function by name True",
        "builtin True",
        "class True",
        "nested class True",
        "range True",
        "slice, complex True",
    ]


def test_the_classes_cloudpickle_rebuilds_from_the_types_module_go_to_cloudpickle() -> None:
    """cloudpickle pickles the classes of the ``types`` module its own way (``_builtin_type``), not by name."""
    script = (
        "import types\n"
        "from manycore._serialize import dumps\n"
        "objs = [types.SimpleNamespace, types.GenericAlias, types.UnionType, types.DynamicClassAttribute]\n"
        "ours = [dumps(o) for o in objs]\n"
        "import cloudpickle\n"
        "print([a == cloudpickle.dumps(o, protocol=5) for a, o in zip(ours, objs)])\n"
    )
    out = python_output(script)
    assert out == "[True, True, True, True]\n"


BY_VALUE_SCRIPT = r"""
import sys
import manycore
from manycore._wire import loads
import manycore._serialize as S

def main_fn(x):
    return x + 1

assert S._plain(__import__("io").BytesIO(), main_fn, None) is False  # a __main__ function: by value
with manycore.Pool(2) as pool:
    assert pool.map(abs, [-1, -2]) == [1, 2]
    print("after plain tasks:", "cloudpickle" in sys.modules)
    assert pool.map(main_fn, [1, 2]) == [2, 3]
    assert pool.map(lambda x: x * 10, [1, 2]) == [10, 20]
    print("after by-value tasks:", "cloudpickle" in sys.modules)
"""


def test_by_value_code_still_goes_through_cloudpickle() -> None:
    out = python_output(BY_VALUE_SCRIPT)
    assert out.splitlines() == ["after plain tasks: False", "after by-value tasks: True"]


def test_a_module_registered_by_value_is_pickled_by_value() -> None:
    """The program imported cloudpickle and registered a module by value: cloudpickle pickles everything."""
    script = (
        "import cloudpickle, json, sys\n"
        "cloudpickle.register_pickle_by_value(json)\n"
        "from manycore._serialize import dumps\n"
        "print(dumps(json.dumps) != __import__('pickle').dumps(json.dumps, protocol=5))\n"
    )
    out = python_output(script)
    assert out == "True\n"


@pytest.mark.needs("fork")
def test_a_fork_pool_imports_cloudpickle_before_it_forks() -> None:
    """A worker forked while another thread imports cloudpickle would inherit its import lock held."""
    script = (
        "import sys, manycore\n"
        "pool = manycore.Pool(2, start_method='fork')\n"
        "print('cloudpickle' in sys.modules)\n"
        "pool.close(); pool.join()\n"
    )
    out = python_output(script)
    assert out == "True\n"
