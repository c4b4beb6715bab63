"""`choreo run`'s options: the RunOptions object, UsageError for options that cannot work,
and a quick reading of plain command lines.

typer (with the pydantic models it builds to check option values) takes about 0.2 s to
start, as long as choreo takes for 300,000 trivial records. A `choreo run` command line
made only of known options with plainly valid values is read here instead; anything
else (-h or --help, a value to check or refuse, an option written another way) is left
to typer, which stays the definition of the command: its help, its messages (in
choreo's words, cli/usage.py), its checks. So a bad value gets the same message however
it is written. tests/unit/test_run_options.py holds the two to the same result for any
command line; tests/cli/test_help.py, every bad value to typer's message.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

EXECUTORS = ("thread", "process", "dask")
# What a precheck that raises something other than Skip does (--precheck-errors).
PRECHECK_ERRORS = ("skip", "fail")
# More records at once than this is refused (exit 2): each is a thread (or a process),
# and tens of thousands of them eat the memory before the first record runs.
MAX_WORKERS = 4096
# The longest input line read (--max-line-bytes); a longer one is an invalid record.
MAX_LINE_BYTES = 64 * 1024 * 1024


class UsageError(Exception):
    """The command line, the pipeline or the input is unusable: exit 2 before any record ran.

    ``files``: the options whose files are the trouble (``--summary-json`` among them:
    then no summary is written there).
    """

    def __init__(self, message: str, *, files: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.files = files


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Everything `choreo run` was asked to do, parsed from the command line."""

    pipeline: Path
    input: str = "-"
    output: str = "-"
    workers: int | None = None
    ordered: bool = True
    fail_fast: bool = False
    set_values: tuple[str, ...] = ()
    include_input: bool = False
    include_data: bool = False
    progress: bool | None = None
    quiet: bool = False
    summary_json: Path | None = None
    log_level: str = "WARNING"
    rejects: Path | None = None
    checkpoint: Path | None = None
    dry_run: bool = False
    executor: str = "thread"
    scheduler: str | None = None
    max_line_bytes: int = MAX_LINE_BYTES
    # The failure budget: N or P% as given (checked when read), and K.
    max_failures: str | None = None
    max_consecutive_failures: int | None = None
    # --limit NAME=RATE, as given (read and checked against the file's limits: later).
    limit_values: tuple[str, ...] = ()
    # What a precheck raising something other than Skip does: "skip" (choreograph's
    # semantics) or "fail"; None: as the pipeline file says (precheck_errors:).
    precheck_errors: str | None = None
    # The Prometheus textfile and the Markdown report of the run.
    metrics_file: Path | None = None
    report: Path | None = None


# Option -> (RunOptions field, kind). Kinds: "str", "path", "workers", "count" (a positive
# whole number), "executor", "set" (repeatable), "failures" (N or P%) take a value; a bool
# is a flag that sets the field to it.
OPTIONS: dict[str, tuple[str, Any]] = {
    "--input": ("input", "str"),
    "-i": ("input", "str"),
    "--output": ("output", "str"),
    "-o": ("output", "str"),
    "--workers": ("workers", "workers"),
    "-w": ("workers", "workers"),
    "--ordered": ("ordered", True),
    "--unordered": ("ordered", False),
    "--fail-fast": ("fail_fast", True),
    "--set": ("set_values", "set"),
    "--include-input": ("include_input", True),
    "--include-data": ("include_data", True),
    "--progress": ("progress", True),
    "--no-progress": ("progress", False),
    "--quiet": ("quiet", True),
    "-q": ("quiet", True),
    "--summary-json": ("summary_json", "path"),
    "--log-level": ("log_level", "str"),
    "--rejects": ("rejects", "path"),
    "--checkpoint": ("checkpoint", "path"),
    "--dry-run": ("dry_run", True),
    "--executor": ("executor", "executor"),
    "--scheduler": ("scheduler", "str"),
    "--max-line-bytes": ("max_line_bytes", "count"),
    "--max-failures": ("max_failures", "failures"),
    "--max-consecutive-failures": ("max_consecutive_failures", "count"),
    "--limit": ("limit_values", "limit"),
    "--precheck-errors": ("precheck_errors", "precheck_errors"),
    "--metrics-file": ("metrics_file", "path"),
    "--report": ("report", "path"),
}


def read_plain_run_args(args: list[str]) -> RunOptions | None:
    """RunOptions for ``choreo run ARGS`` when ARGS are plain, else None (ask typer).

    Plain: one PIPELINE, and options spelt as listed in OPTIONS (a value as the next
    argument, or after ``=`` for a long option), each value non-empty and not starting with ``-`` (but
    ``-`` itself), ``--workers`` (at most MAX_WORKERS) and ``--max-line-bytes`` positive
    whole numbers without sign or leading zero, ``--executor`` one of EXECUTORS.

    >>> read_plain_run_args(["p.yaml", "-i", "in.jsonl", "-w", "4", "--set", "a=1", "-q"])
    RunOptions(pipeline=PosixPath('p.yaml'), input='in.jsonl', output='-', workers=4, ordered=True, fail_fast=False, set_values=('a=1',), include_input=False, include_data=False, progress=None, quiet=True, summary_json=None, log_level='WARNING', rejects=None, checkpoint=None, dry_run=False, executor='thread', scheduler=None, max_line_bytes=67108864, max_failures=None, max_consecutive_failures=None, limit_values=(), precheck_errors=None, metrics_file=None, report=None)
    >>> read_plain_run_args(["p.yaml", "--help"]) is None
    True
    """
    values: dict[str, Any] = {}
    sets: list[str] = []
    limits: list[str] = []
    pipeline: str | None = None
    position = 0
    while position < len(args):
        arg = args[position]
        position += 1
        if not arg.startswith("-") or arg == "-":
            if pipeline is not None or not arg or arg == "-":
                return None
            pipeline = arg
            continue
        # Only a long option takes its value after "=": "-i=x" is -i with the value "=x".
        name, equals, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name not in OPTIONS:
            return None
        field, kind = OPTIONS[name]
        if isinstance(kind, bool):
            if equals:
                return None
            values[field] = kind
            continue
        if not equals:
            if position == len(args):
                return None
            value = args[position]
            position += 1
        if not value or (value.startswith("-") and value != "-"):
            return None
        if kind == "set":
            sets.append(value)
        elif kind == "limit":
            limits.append(value)
        elif kind in ("workers", "count"):
            if not value.isdecimal() or not value.isascii() or value.startswith("0"):
                return None
            number = int(value)
            if kind == "workers" and number > MAX_WORKERS:
                return None  # typer says it is out of range
            values[field] = number
        elif kind == "precheck_errors":
            if value not in PRECHECK_ERRORS:
                return None
            values[field] = value
        elif kind == "executor":
            if value not in EXECUTORS:
                return None
            values[field] = value
        elif kind == "failures":
            from choreo_cli.core.budget import parse_failures

            try:
                parse_failures(value)
            except ValueError:
                return None  # typer says what is wrong
            values[field] = value
        elif kind == "path":
            values[field] = Path(value)
        else:
            values[field] = value
    if pipeline is None:
        return None
    return RunOptions(
        pipeline=Path(pipeline), set_values=tuple(sets), limit_values=tuple(limits), **values
    )
