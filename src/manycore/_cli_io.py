"""What ``manycore run`` reads and writes: input items, where each came from, JSON lines out, the worker call.

Everything here is lazy or bounded, so that a run over a 10-million-line input keeps a flat memory: the items
are a generator that ``manycore.imap`` reads through its bounded window, and ``Locations`` finds any item's
FILE:LINE from a few numbers per file.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import csv
import io
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

STDIN = "-"


class InputError(Exception):
    """The input cannot be read or parsed (a usage error: exit status 2). The message names FILE:LINE."""


class UsageError(Exception):
    """A mistake in the command line or its files, found before (or instead of) running: exit status 2."""


def name_of(path: str) -> str:
    """How a path is shown in messages: ``<stdin>`` for ``-``."""
    return "<stdin>" if path == STDIN else path


def check_inputs(paths: list[str]) -> None:
    """Refuse missing or unreadable input files before any work runs (they are opened one at a time later)."""
    for path in paths:
        if path == STDIN:
            continue
        if not os.path.exists(path):
            raise UsageError(f"cannot read input {path!r}: no such file")
        if os.path.isdir(path):
            raise UsageError(f"cannot read input {path!r}: it is a directory")
        if not os.access(path, os.R_OK):
            raise UsageError(f"cannot read input {path!r}: permission denied")


class Locations:
    """FILE:LINE of every item, in memory that does not grow with the input.

    Storing a location per item in flight cost 220 MiB on a 2-million-line input (manycore reads far ahead
    for tiny items). Instead: where each file starts (an item index), and an anchor (index, line) wherever the
    line stops following from the previous item's (a file's first item, after a skipped blank line, after a
    CSV record that spans lines): a handful per file. The feeder thread of ``manycore.imap`` appends, the main
    thread looks up; each is a single operation on an ``array``, atomic under the GIL.
    """

    def __init__(self) -> None:
        self._starts = array.array("q")  # the first item index of each file
        self._names: list[str] = []
        self._at = array.array("q")  # anchors: the item index...
        self._lines = array.array("q")  # ...and its line
        self._expect = -1  # the line the next item has if it follows on

    def file(self, index: int, name: str) -> None:
        """A new input file starts at item ``index`` (a name is appended before its first anchor)."""
        self._names.append(name)
        self._starts.append(index)
        self._expect = -1

    def add(self, index: int, line: int) -> None:
        """Item ``index`` is at ``line`` of the current file."""
        if line != self._expect:
            self._at.append(index)
            self._lines.append(line)
        self._expect = line + 1

    def of(self, index: int) -> str:
        """``FILE:LINE`` of item ``index`` (``?`` if unknown: an index that was never read)."""
        k = bisect.bisect_right(self._at, index) - 1
        f = bisect.bisect_right(self._starts, index) - 1
        if index < 0 or k < 0 or f < 0:
            return "?"
        return f"{self._names[f]}:{self._lines[k] + index - self._at[k]}"


def read_items(paths: list[str], fmt: str, star: bool, where: Locations) -> Iterator[Any]:
    """Every item of every input, in order: a generator, so nothing is read before manycore asks for it.

    ``fmt`` is ``"text"`` (each line a str), ``"jsonl"`` (each non-blank line parsed as JSON) or ``"csv"``
    (each row a dict, or with ``star`` its values as a list).
    """
    index = 0
    for path in paths:
        name = name_of(path)
        where.file(index, name)
        rows = _csv_rows(path, name, star) if fmt == "csv" else _line_items(path, name, fmt, star)
        for line, value in rows:
            where.add(index, line)
            index += 1
            yield value


def _open_binary(path: str, name: str) -> IO[bytes]:
    if path == STDIN:
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # closed by the caller
    except OSError as exc:  # removed or made unreadable after check_inputs
        raise InputError(f"cannot read input {name}: {exc.strerror or exc}") from None


def _line_items(path: str, name: str, fmt: str, star: bool) -> Iterator[tuple[int, Any]]:
    # Bytes decoded a line at a time, so that a decoding error names its line.
    stream = _open_binary(path, name)
    with contextlib.nullcontext(stream) if path == STDIN else stream:
        for number, raw in enumerate(stream, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{name}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                ) from None
            text = text[:-1] if text.endswith("\n") else text
            text = text[:-1] if text.endswith("\r") else text  # a CRLF file
            if fmt == "text":
                yield number, text
            elif text.strip():  # jsonl: blank lines are skipped (they still count for line numbers)
                yield number, _parse_json(text, name, number, star)


def _parse_json(text: str, name: str, number: int, star: bool) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}:{number}: invalid JSON: {exc}") from None
    if star and not isinstance(value, list):
        raise InputError(
            f"{name}:{number}: --star needs a JSON array on each line, not {type(value).__name__}"
        )
    return value


def _csv_rows(path: str, name: str, star: bool) -> Iterator[tuple[int, Any]]:
    """The rows of one CSV file (its first row is its header), each with the line where it starts."""
    binary = _open_binary(path, name)
    # newline="" as the csv module requires (quoted fields may hold newlines); the stdin buffer stays open.
    text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
    try:
        reader = csv.DictReader(text, strict=True)
        try:
            if reader.fieldnames is None:  # reads the header: an empty file has no rows
                return
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{name}:{reader.line_num}: invalid CSV header: {exc}") from None
        while True:
            start = reader.line_num + 1  # physical lines read so far: the next row starts after them
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                raise InputError(f"{name}:{reader.line_num}: invalid CSV: {exc}") from None
            if None in row or None in row.values():
                header = len(reader.fieldnames or ())
                raise InputError(f"{name}:{start}: the row has {_width(row)} fields, the header {header}")
            yield start, list(row.values()) if star else row
    finally:
        if path == STDIN:
            text.detach()  # leave sys.stdin's buffer open
        else:
            text.close()


def _width(row: dict[Any, Any]) -> int:
    extra = row.get(None)
    return sum(value is not None for key, value in row.items() if key is not None) + len(extra or ())


class Spread:
    """What the workers run for ``--star``: ``fn(*item)``.

    ``__wrapped__`` names the function: a journal records and checks ``fn`` itself, with this class's name in
    its digest, so that a journal written without ``--star`` refuses a run with it (its results would differ).
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.__wrapped__ = fn

    def __call__(self, item: Any) -> Any:
        return self.__wrapped__(*item)


class Indexed:
    """What the workers run for ``--unordered``: the item is ``(index, value)``, the result ``(index, result)``.

    Results then come in completion order, and manycore's ``imap_unordered`` does not say whose they are. A
    failure keeps its index in the exception's ``manycore_cli_index`` attribute (exceptions pickle their
    ``__dict__``). ``__wrapped__`` as for ``Spread``.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.__wrapped__ = fn

    def __call__(self, item: tuple[int, Any]) -> tuple[int, Any]:
        index, value = item
        try:
            return index, self.__wrapped__(value)
        except BaseException as exc:
            with contextlib.suppress(Exception):  # an exception type that refuses attributes
                exc.manycore_cli_index = index  # type: ignore[attr-defined]
            raise


# One encoder: json.dumps with options other than its defaults builds a JSONEncoder per call, which was half of
# the parent's time over a million trivial items (benchmarks/cli.py).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def encode(value: Any) -> str:
    """One JSON line (strict JSON: NaN and infinities are refused, as JSON has none)."""
    return _ENCODER.encode(value)


class Encoded:
    """What the workers run: ``fn``'s result as its JSON line, so that encoding runs on every core instead of
    in the parent, whose one core read, encoded and wrote every line (the CLI's bottleneck on cheap items). A
    result JSON cannot write fails its item with a TypeError saying so. ``__wrapped__`` as for ``Spread``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.__wrapped__ = fn

    def __call__(self, item: Any) -> str:
        value = self.__wrapped__(item)
        try:
            return encode(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"the result (a {type(value).__name__}) cannot be written as JSON: {exc}"
            ) from None


class Output:
    """Where the JSON lines go: stdout, or FILE through a temporary file in its directory.

    The temporary file is created at once (an unwritable output is a usage error before any work runs), and
    replaces FILE only in ``commit``, after fsync: a run that is interrupted or fails leaves FILE as it was.
    """

    def __init__(self, path: str | None) -> None:
        self.path = None if path in (None, STDIN) else path
        self._temp: str | None = None
        self.stream: IO[str] = sys.stdout
        if self.path is not None:
            self._create(self.path)

    def _create(self, path: str) -> None:
        if os.path.isdir(path):
            raise UsageError(f"cannot write output {path!r}: it is a directory")
        if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            # /dev/null, a FIFO, a terminal: written to directly; renaming a file over it would replace it.
            try:
                self.stream = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 (closed in commit/discard)
            except OSError as exc:
                raise UsageError(f"cannot write output {path!r}: {exc.strerror or exc}") from None
            self.path = None
            return
        folder, base = os.path.split(os.path.abspath(path))
        try:
            fd, self._temp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".part")
        except OSError as exc:
            raise UsageError(f"cannot write output {path!r}: {exc.strerror or exc}") from None
        # mkstemp makes the file 0600; the output gets the mode FILE has, or a new file's (0666 less umask).
        try:
            mode = os.stat(path).st_mode & 0o7777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        self.stream = open(fd, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 (closed in commit/discard)

    def write(self, line: str) -> None:
        self.stream.write(line + "\n")

    def commit(self) -> None:
        """Make the output final: flushed, and for FILE, fsynced and renamed over FILE."""
        self.stream.flush()
        if self._temp is None or self.path is None:
            return
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self._temp, self.path)
        self._temp = None
        # The rename itself survives a power cut only once the directory is synced too.
        with contextlib.suppress(OSError):
            folder = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    def discard(self) -> None:
        """Drop a FILE output's temporary file (FILE itself is untouched); stdout is only flushed."""
        if self._temp is None:
            with contextlib.suppress(OSError, ValueError):
                self.stream.flush()
            return
        with contextlib.suppress(OSError):
            self.stream.close()
        with contextlib.suppress(OSError):
            os.unlink(self._temp)
        self._temp = None
