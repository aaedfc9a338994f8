"""Progress bars (tqdm) for map and imap: count, rate, ETA, and a total when the input has a length."""

from __future__ import annotations

import threading
from typing import Any, Literal

Progress = bool | Literal["always"]


class Bar:
    """A thread-safe tqdm wrapper: updated from the supervisor thread, closed by whoever finishes first."""

    def __init__(self, progress: Progress, total: int | None, desc: str | None) -> None:
        from tqdm.auto import tqdm

        # tqdm's disable=None turns the bar off when stderr is not a terminal; "always" forces it on.
        disable = None if progress is True else False
        self._bar: Any = tqdm(total=total, desc=desc, disable=disable, unit="item", dynamic_ncols=True)
        self._lock = threading.Lock()
        self._closed = False

    def update(self, n: int) -> None:
        with self._lock:
            if not self._closed:
                self._bar.update(n)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._bar.close()


def make_bar(progress: Any, total: int | None, desc: str | None = None) -> Bar | None:
    if progress is False or progress is None:
        return None
    if progress is not True and progress != "always":
        raise ValueError(f'progress must be True, False or "always", not {progress!r}')
    return Bar(progress, total, desc)
