"""The ``manycore`` command line: ``manycore run MODULE:FUNCTION [INPUT ...]`` and ``manycore status JOURNAL``.

GNU parallel for Python functions: each input line (text, JSON or a CSV row) becomes one call of an importable
function on every core, through ``manycore.imap``, and each result one JSON line, in input order. It sits on
top of the public API (``manycore.imap``) and ``manycore._journal``; nothing in manycore imports it.
Reading and writing are in ``_cli_io``. Exit statuses: 0 all items succeeded, 1 some failed, 2 a usage error,
130 Ctrl-C (and 141 when stdout is closed early, as a pipeline tool killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import manycore
from manycore.errors import JournalError

from ._cli_io import (
    STDIN,
    Encoded,
    Indexed,
    InputError,
    Locations,
    Output,
    Spread,
    UsageError,
    check_inputs,
    encode,
    read_items,
)

OK, FAILED, USAGE, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 130, 141

MAIN_HELP = """\
Run a Python function over many inputs on every core, from the shell ("GNU parallel for Python functions").

Each input line (text, JSON or a CSV row) becomes one call of an importable function, run on manycore's
process pool; each result becomes one JSON line, in input order. A worker that crashes or hangs fails only
its item. With --journal, a run killed half-way resumes where it stopped.
"""

MAIN_EPILOG = """\
exit status:
  0 every item succeeded, 1 some items failed, 2 usage error, 130 interrupted (Ctrl-C)

examples:
  manycore run json:loads data.txt
  seq 1 100 | manycore run math:factorial --jsonl
  manycore run mypkg.features:extract inputs.jsonl --jsonl -o features.jsonl --journal run.db --retries 2 --progress
  manycore status run.db

See 'manycore run --help' and 'manycore status --help'.
"""

RUN_HELP = """\
Call MODULE:FUNCTION once per input item on every core and write each result as a JSON line.

MODULE is imported as 'python -m' would (the current directory first on sys.path); FUNCTION may be a dotted
path (Class.method). Inputs are files, or '-' for stdin (the default); several are read in order, lazily, so
memory stays flat however long the input.

input formats (one item per line or row):
  (default)  each line is one str argument, its newline removed; every line counts, empty ones too
  --jsonl    each line is a JSON value, the function's one argument; blank lines are skipped
  --csv      each row is a dict {column: str} keyed by the file's header row (each file has its own)
  --star     spread the item into arguments: fn(*item); a JSONL line must then be an array, a CSV row
             gives its values in column order

output (stdout, or -o FILE):
  one JSON line per item, in input order; with --unordered, as items finish, each line [index, result]
  (index counts items from 0). A result that JSON cannot encode (a set, NaN) fails its item. With -o FILE,
  FILE is replaced only when the run completes (exit 0 or 1): Ctrl-C or a usage error leaves it untouched.

failures:
  each failed item is reported on stderr as 'item 17 (FILE:LINE): ValueError: message' with the worker's
  traceback. --on-error stop (default) stops at the first failure; skip writes nothing for failed items;
  record writes {"error": {"index": i, "type": "ValueError", "message": "..."}} in their place.
"""

RUN_EPILOG = """\
exit status:
  0   every item succeeded
  1   some items failed (reported on stderr, and in the journal if any)
  2   usage error: bad option, module or function not found, unreadable or invalid input (FILE:LINE),
      unwritable output, a file that is not a manycore journal
  130 interrupted (Ctrl-C); -o FILE is left as it was
  141 stdout was closed early (e.g. '| head')

resume:
  --journal PATH records every finished item in a SQLite file. Run the same command again after a crash,
  a kill or Ctrl-C: finished items come from the journal, only the rest run. Items that failed stay failed
  unless --retry-failed. 'manycore status PATH' shows where a run stands.

examples:
  manycore run json:loads data.txt
  seq 1 100 | manycore run math:factorial --jsonl
  manycore run mypkg.features:extract inputs.jsonl --jsonl -o features.jsonl --journal run.db --retries 2 --progress
  manycore run mypkg.geo:distance points.csv --csv --star --unordered --workers 4
  manycore run mypkg.pages:fetch urls.txt --backend thread --workers 32 --on-error record -o pages.jsonl
  manycore run mypkg.features:extract inputs.jsonl --jsonl --timeout 60 --on-error skip > features.jsonl
"""

STATUS_HELP = """\
Show where a journaled run stands: its function, how many items are done, failed and pending, and each
failure with its worker traceback.
"""

STATUS_EPILOG = """\
exit status:
  0 the journal was read, 2 the file is missing or is not a manycore journal

examples:
  manycore status run.db
  manycore run mypkg.features:extract inputs.jsonl --jsonl -o features.jsonl --journal run.db --retry-failed
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``manycore`` parser with its ``run`` and ``status`` subcommands."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="manycore", description=MAIN_HELP, epilog=MAIN_EPILOG, formatter_class=raw
    )
    parser.add_argument("--version", action="version", version=f"manycore {manycore.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run", help="run a function over inputs", description=RUN_HELP, epilog=RUN_EPILOG, formatter_class=raw
    )
    _add_run_arguments(run)
    run.set_defaults(handler=run_command)
    status = commands.add_parser(
        "status",
        help="show a journal's progress and failures",
        description=STATUS_HELP,
        epilog=STATUS_EPILOG,
        formatter_class=raw,
    )
    status.add_argument("journal", metavar="JOURNAL", help="the file given to 'manycore run --journal'")
    status.set_defaults(handler=status_command)
    return parser


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("function", metavar="MODULE:FUNCTION", help="e.g. mypkg.features:extract")
    run.add_argument("inputs", metavar="INPUT", nargs="*", help="input files, '-' for stdin (the default)")
    fmt = run.add_mutually_exclusive_group()
    fmt.add_argument("--jsonl", action="store_const", const="jsonl", dest="format", help="JSON lines input")
    fmt.add_argument(
        "--csv", action="store_const", const="csv", dest="format", help="CSV input with a header"
    )
    run.set_defaults(format="text")
    run.add_argument("--star", action="store_true", help="call fn(*item) (with --jsonl or --csv)")
    run.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    run.add_argument("--unordered", action="store_true", help="write [index, result] lines as items finish")
    run.add_argument("--workers", type=_positive_int, metavar="N", help="worker count (default: all cores)")
    run.add_argument("--backend", default="process", help="process (default), thread, or dask if installed")
    run.add_argument("--chunksize", type=_chunksize, metavar="N", help="items per task (default: automatic)")
    run.add_argument("--journal", metavar="PATH", help="record finished items in PATH; resume from it")
    run.add_argument("--retry-failed", action="store_true", help="with --journal: run failed items again")
    run.add_argument(
        "--retries", type=_count, default=0, metavar="N", help="tries after a failure (default 0)"
    )
    run.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="fail an item that runs longer")
    run.add_argument(
        "--on-error",
        choices=("stop", "skip", "record"),
        default="stop",
        help="on a failed item (default stop)",
    )
    run.add_argument("--progress", action="store_true", help="show a progress bar on stderr")


def _positive_int(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _chunksize(text: str) -> int | None:
    return None if text == "auto" else _positive_int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (``python -m manycore`` and the script exit with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on its own errors
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE
    prog = f"manycore {args.command}"
    try:
        status: int = args.handler(args)
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    return status


def load_function(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNCTION`` with the current directory first on sys.path, as ``python -m`` does.

    The workers get the parent's sys.path, so they find the module the same way.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise UsageError(f"expected MODULE:FUNCTION (e.g. mypkg.features:extract), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path[:1]:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:  # the module's own code raised: its traceback is the user's to read
        traceback.print_exc()
        raise UsageError(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from None
    where = module_name
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{where!r} has no attribute {part!r} (looking for {spec!r})")
        obj = getattr(obj, part)
        where = f"{where}.{part}"
    if not callable(obj):
        raise UsageError(f"{spec!r} is not callable (it is a {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def run_command(args: argparse.Namespace) -> int:
    """``manycore run``: check everything that can be checked, then run; the output is committed at the end."""
    if args.star and args.format == "text":
        raise UsageError("--star needs --jsonl or --csv (a text line is a single argument)")
    if args.retry_failed and args.journal is None:
        raise UsageError("--retry-failed needs --journal")
    inputs = args.inputs or [STDIN]
    check_inputs(inputs)
    fn = load_function(args.function)
    output = Output(args.output)
    try:
        status = _run(args, fn, inputs, output)
    except BaseException:
        output.discard()
        raise
    if status != BROKEN_PIPE:
        output.commit()
    return status


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "workers": args.workers,
        "ordered": not args.unordered,
        "progress": args.progress,
        "chunksize": args.chunksize,
        "backend": args.backend,
        "on_error": "return",  # every item's outcome comes back: failures as exception instances
        "retries": args.retries,
    }
    if args.timeout is not None:
        options["task_timeout"] = args.timeout
    # Only when asked for, so that everything else works on a manycore without journals.
    if args.journal is not None:
        options["journal"] = args.journal
    if args.retry_failed:
        options["retry_failed"] = True
    return options


def _start(args: argparse.Namespace, fn: Callable[..., Any], inputs: list[str], where: Locations) -> Any:
    items: Iterator[Any] = read_items(inputs, args.format, args.star, where)
    if args.unordered:
        items = enumerate(items)
    if args.star:
        fn = Spread(fn)
    fn = Encoded(fn)  # results come back as their JSON lines
    if args.unordered:
        fn = Indexed(fn)
    try:
        return manycore.imap(fn, items, **_options(args))
    except (ValueError, TypeError) as exc:  # options the backend refuses, a file that is not a journal
        raise UsageError(_explained(exc)) from None


def _run(args: argparse.Namespace, fn: Callable[..., Any], inputs: list[str], output: Output) -> int:
    where = Locations()
    report = _Report(args.on_error)
    results = _start(args, fn, inputs, where)
    try:
        for index, value in _outcomes(results, args.unordered):
            line = report.line(index, value, where)
            if line is not None:
                output.write(f"[{index}, {line}]" if args.unordered else line)
            elif report.stopped:
                break
        output.stream.flush()
    except InputError as exc:
        raise UsageError(str(exc)) from None
    except BrokenPipeError:
        # The reader went away (| head): stop quietly; stdout is pointed at /dev/null so that the interpreter's
        # own flush at exit does not complain a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except JournalError as exc:
        raise UsageError(_explained(exc)) from None
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
    return report.finish()


def _outcomes(results: Iterator[Any], unordered: bool) -> Iterator[tuple[int, Any]]:
    """(input index, result or exception) of each item, whatever the order."""
    if not unordered:
        yield from enumerate(results)
        return
    for value in results:
        if isinstance(value, BaseException):
            yield _failed_index(value), value
        else:
            yield value[0], value[1]


def _failed_index(exc: BaseException) -> int:
    # Call sets manycore_cli_index in the worker; manycore's own errors (a lost worker, a timeout, a result
    # that cannot be pickled) carry the item's index, which is the input index as the items are fed one each.
    for name in ("manycore_cli_index", "index"):
        value = getattr(exc, name, None)
        if isinstance(value, int):
            return value
    return -1


def _explained(exc: BaseException) -> str:
    # A journal records the function it was written by, and --star and --unordered wrap it (Spread, Indexed).
    hint = " (--star and --unordered count as part of the function: resume with the options of the first run)"
    return str(exc) + (hint if "was written by" in str(exc) else "")


class _Report:
    """Turns each outcome into an output line (or none), reports failures on stderr, counts them."""

    def __init__(self, on_error: str) -> None:
        self.on_error = on_error
        self.items = 0
        self.failed = 0
        self.stopped = False

    def line(self, index: int, value: Any, where: Locations) -> str | None:
        self.items += 1
        if not isinstance(value, BaseException):
            return str(value)  # the JSON line the worker wrote (Encoded)
        self.failed += 1
        _print_failure(index, where.of(index), value)
        if self.on_error == "record":
            error = {"index": index, "type": type(value).__name__, "message": str(value)}
            return encode({"error": error})
        self.stopped = self.on_error == "stop"
        return None

    def finish(self) -> int:
        if self.stopped:
            print(
                "manycore run: stopped at the first failure (--on-error skip or record runs the rest)",
                file=sys.stderr,
            )
        elif self.failed:
            print(f"manycore run: {self.failed} of {self.items} items failed", file=sys.stderr)
        return FAILED if self.failed else OK


def _print_failure(index: int, where: str, exc: BaseException) -> None:
    """``item 17 (FILE:LINE): ValueError: message``, then the worker's traceback, indented."""
    shown = "?" if index < 0 else str(index)
    lines = [f"item {shown} ({where}): {type(exc).__name__}: {exc}"]
    cause = exc.__cause__
    if cause is not None:
        # A RemoteTraceback's str is the worker's traceback between triple quotes.
        text = str(cause).strip()
        text = text.removeprefix('"""').removesuffix('"""').strip("\n")
        lines += ["    " + line for line in text.splitlines()]
    print("\n".join(lines), file=sys.stderr)


def status_command(args: argparse.Namespace) -> int:
    """``manycore status``: what a journal holds, read only."""
    path = args.journal
    if not os.path.exists(path):
        raise UsageError(f"no such journal: {path!r}")
    journal = importlib.import_module("manycore._journal")
    try:
        status = journal.read_status(path)
    except journal.JournalError as exc:
        raise UsageError(str(exc)) from None
    pending = "unknown (the input has not been read to its end)"
    if status.total is not None:
        pending = str(status.total - status.done - status.failed)
    print(f"journal: {path}")
    print(f"function: {status.function}")
    print(f"done: {status.done}")
    print(f"failed: {status.failed}")
    print(f"pending: {pending}")
    for failure in status.failures:
        print(f"item {failure.index}: {failure.type}: {failure.message}")
        for line in (failure.traceback or "").rstrip("\n").splitlines():
            print("    " + line)
    return OK
