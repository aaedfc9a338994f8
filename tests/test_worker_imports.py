"""The worker side (``manycore._worker``) imports nothing of the parent side, and stays light.

A worker needs the wire protocol, the framing, shared memory, worker-side pickling, multiprocessing's worker
state and the public exceptions; it never needs the scheduler, jobs, results, options or backends. Both what
its code can import (read from the sources) and what a real worker has loaded are checked.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import manycore

SRC = Path(manycore.__file__).parent
WORKER_PACKAGE = SRC / "_worker"
# The shared layer that the worker side may use: everything else in manycore is the parent's.
SHARED = {
    "manycore",
    "manycore._version",
    "manycore._protocol",
    "manycore._channel",
    "manycore._shm",
    "manycore._segment",
    "manycore._wire",
    "manycore._mpstate",
    "manycore._platform",
    "manycore.errors",
}
# What a worker must not load at start-up (each costs milliseconds of every worker's start, W6).
HEAVY = {"typing", "threading", "multiprocessing", "cloudpickle", "enum", "re"}


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _imports(path: Path, src: Path = SRC) -> set[str]:
    """manycore modules that ``path`` imports anywhere (in functions too), but for ``if TYPE_CHECKING:`` blocks."""
    name = _module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # only the else branch runs
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "manycore")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] == "manycore":
                found.add(module)
                # ``from . import _channel`` names a module, not an attribute
                found.update(
                    f"{module}.{alias.name}"
                    for alias in node.names
                    if (src.parent / module.replace(".", "/") / f"{alias.name}.py").exists()
                    or (src.parent / module.replace(".", "/") / alias.name / "__init__.py").exists()
                )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _path_of(module: str) -> Path:
    base = SRC.parent / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def test_the_worker_package_exists_with_its_modules() -> None:
    modules = sorted(p.name for p in WORKER_PACKAGE.glob("*.py"))
    assert "__init__.py" in modules and len(modules) > 2, modules


def test_worker_code_can_import_nothing_of_the_parent_side() -> None:
    """Every manycore import the worker package can reach, in any function, followed through shared modules."""
    todo = [_module_name(p) for p in sorted(WORKER_PACKAGE.glob("*.py"))]
    seen: dict[str, str] = dict.fromkeys(todo, "")
    while todo:
        name = todo.pop()
        for imported in _imports(_path_of(name)):
            if imported not in seen:
                seen[imported] = name
                todo.append(imported)
    parent_side = {
        name: importer
        for name, importer in seen.items()
        if name not in SHARED and not name.startswith("manycore._worker")
    }
    assert parent_side == {}, (
        f"the worker side imports parent-side modules (module: imported by): {parent_side}"
    )


def test_the_import_check_sees_a_parent_side_import(tmp_path: Path) -> None:
    """The AST check above would catch a worker module importing the scheduler, even inside a function."""
    bad = tmp_path / "manycore" / "_worker" / "_bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from .. import _pool\n"
        "def f():\n    from .._scheduler import Scheduler\n    from .. import _jobs\n"
    )
    (tmp_path / "manycore" / "_jobs.py").write_text("")
    assert _imports(bad, tmp_path / "manycore") == {"manycore._scheduler", "manycore", "manycore._jobs"}


_PROBE = """
import sys
import manycore._zygote
from manycore._worker import _entry
print(sorted(sys.modules))
"""  # no json here: it imports re and enum


def test_the_fork_server_and_worker_entry_load_only_the_worker_side() -> None:
    """What the fork server imports before it forks workers (and a spawned worker at start-up)."""
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(ast.literal_eval(out))
    ours = {m for m in loaded if m.split(".")[0] == "manycore"}
    assert {m for m in ours if m not in SHARED and not m.startswith("manycore._worker")} == {
        "manycore._zygote"
    }
    assert loaded & HEAVY == set()


_IN_A_POOL = """
import sys
import manycore
if __name__ == "__main__":
    with manycore.Pool(1, start_method=sys.argv[1]) as pool:
        # eval is a builtin: it travels by reference, so the probe itself imports nothing (no cloudpickle).
        print(pool.apply(eval, ("sorted(__import__('sys').modules)",)))
"""


# Not fork: a forked worker has the program's modules.
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_worker_has_loaded_nothing_of_the_parent_side(start_method: str) -> None:
    """A worker of the fork server, or a spawned one, loads only the worker side.

    From a fresh program: a parent that has imported numpy has its workers preload it, and numpy loads typing,
    re, enum...
    """
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    out = subprocess.run(
        [sys.executable, "-c", _IN_A_POOL, start_method],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    loaded = set(ast.literal_eval(out))
    ours = {m for m in loaded if m.split(".")[0] == "manycore"}
    assert "manycore._worker._serve" in ours
    allowed = SHARED | {"manycore._zygote"}
    assert {m for m in ours if m not in allowed and not m.startswith("manycore._worker")} == set()
    assert loaded & HEAVY == set()


def test_the_worker_package_init_is_empty() -> None:
    """Every user of the worker side names the module it needs (``_entry``, ``_run``, ``_blas``...): importing
    the package itself loads nothing, and it offers no name of its own."""
    import ast
    import inspect

    from manycore import _worker

    tree = ast.parse(inspect.getsource(_worker))
    statements = [
        node
        for node in tree.body
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
    ]
    assert statements == [], [ast.unparse(node)[:60] for node in statements]
