"""multiprocessing's view of a worker: its pool-worker identity, authkey and parent, and initargs' descriptors.

The worker side of ``_initdata`` (read that first). Workers do not import multiprocessing at start-up (W6):
``set_identity`` applies the state the parent sent when something in the worker imports multiprocessing.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# A worker forked from the user's process (start_method="fork") takes the initializer and its arguments from
# the parent's memory, as multiprocessing's fork workers do: objects such as a fork-context Lock can only be
# inherited, never pickled. Set in the child by the fork launcher.
inherited_init: tuple[Callable[..., object] | None, tuple[Any, ...]] | None = None
# Descriptors that came with the init frame, for objects in initargs that pickled one (see InitFd).
INIT_FDS: list[int] = []


class InitFd:
    """A descriptor sent with the init frame: what multiprocessing's ``reduction.DupFd`` gives in a worker.

    The parent pickles initargs as multiprocessing pickles a new process's data ("spawning"): a Connection,
    a Queue's pipe or a sharedctypes arena asks the parent to pass its descriptor on (``duplicate_for_child``)
    and the worker rebuilds the object from ``detach()``.
    """

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def detach(self) -> int:
        return INIT_FDS[self.index]


class _WhenImported:
    """A ``sys.meta_path`` entry that runs a hook right after the named modules are first imported.

    Workers do not import multiprocessing (W6); this sets its per-process state (the pool worker's name,
    identity, parent and authkey) the moment something in the worker imports it.
    """

    def __init__(self, hooks: dict[str, Callable[[Any], None]]) -> None:
        self.hooks = hooks

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.hooks:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, self.hooks.pop(name))
                    if not self.hooks:
                        sys.meta_path.remove(self)
                return spec
        return None


class _HookedLoader:
    def __init__(self, loader: Any, hook: Callable[[Any], None]) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._hook(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename...: the real loader's
        return getattr(self._loader, name)


def _on_import(name: str, hook: Callable[[Any], None], hooks: dict[str, Callable[[Any], None]]) -> None:
    module = sys.modules.get(name)
    if module is not None:
        hook(module)
    else:
        hooks[name] = hook


def set_identity(meta: tuple[Any, ...]) -> None:
    """Give multiprocessing, whenever it is imported here, the state of one of its own pool workers."""
    authkey, name, identity, parent_name, parent_pid, tracker_fd = meta[:6]
    forked = inherited_init is not None

    def process_state(process: Any) -> None:
        me = process.current_process()
        me.authkey = authkey  # Manager proxies unpickled here connect with it, as the parent's do
        me.name = name
        me._identity = identity
        me._parent_pid = parent_pid
        try:
            sentinel = os.pidfd_open(parent_pid)  # readable once the parent exits: is_alive(), join()
        except (OSError, AttributeError):
            sentinel = None
        process._parent_process = process._ParentProcess(parent_name, parent_pid, sentinel)
        if forked:
            process._children = set()  # the parent's children are not ours to wait for

    def tracker_state(resource_tracker: Any) -> None:
        # Shared memory and semaphores opened here are tracked by the parent's tracker, as in multiprocessing:
        # a tracker of the worker's own would unlink them when the worker exits.
        resource_tracker._resource_tracker._fd = INIT_FDS[tracker_fd]

    hooks: dict[str, Callable[[Any], None]] = {}
    _on_import("multiprocessing.process", process_state, hooks)
    if tracker_fd is not None:
        _on_import("multiprocessing.resource_tracker", tracker_state, hooks)
    if hooks:
        sys.meta_path.insert(0, _WhenImported(hooks))
    util = sys.modules.get("multiprocessing.util")
    if forked and util is not None:
        util._run_after_forkers()  # e.g. proxies open their own connection to a manager, as in multiprocessing
