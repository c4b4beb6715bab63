"""What `choreo run` is made of, built from RunOptions: the pipeline, the executor, the
failure budget, the input, the checkpoint, the outputs and the progress display. Each
builder raises UsageError (exit 2) for what is unusable; run_session.py puts them together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from choreo_cli.cli.run_options import MAX_LINE_BYTES, MAX_WORKERS, UsageError

if TYPE_CHECKING:
    from choreo_cli.cli.console import Console
    from choreo_cli.cli.progress import InputPositions, Progress
    from choreo_cli.cli.rejects import Rejects
    from choreo_cli.cli.run_options import RunOptions
    from choreo_cli.cli.streams import Streams
    from choreo_cli.core.budget import FailureBudget
    from choreo_cli.core.summary import RunSummary
    from choreo_cli.executors.base import Executor
    from choreo_cli.jsonl.checkpoint import Checkpoint
    from choreo_cli.jsonl.reader import JsonlReader
    from choreo_cli.jsonl.writer import ResultWriter
    from choreo_cli.pipeline.definitions import Pipeline


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RunInput:
    """The input of a run: its bytes, its size when known (for the progress bar), and
    whether it is a regular file (only a pipe can block a read for ever)."""

    stream: BinaryIO
    size: int | None
    regular: bool


def record_run_files(summary: RunSummary, options: RunOptions) -> None:
    """The pipeline file and the input in the summary, with the sha256 of the pipeline
    file's bytes (None when it cannot be read)."""
    digest: str | None = None
    # Only a regular file is read: a FIFO would wait for a writer (a refused run may
    # not have looked at the path yet).
    with contextlib.suppress(OSError):
        if options.pipeline.is_file():
            digest = hashlib.sha256(options.pipeline.read_bytes()).hexdigest()
    summary.record_run(pipeline=str(options.pipeline), pipeline_sha256=digest, input=options.input)


def load_run_pipeline(options: RunOptions) -> Pipeline:
    """The pipeline file, with ``--set`` values; raises UsageError or PipelineError."""
    from choreo_cli.pipeline.loader import load_pipeline

    overrides = set_overrides(options)
    if not options.pipeline.is_file():
        what = "is not a file" if options.pipeline.exists() else "does not exist"
        raise UsageError(f"pipeline file {options.pipeline} {what}")
    pipeline = load_pipeline(options.pipeline, overrides=overrides)
    # --precheck-errors over the file's precheck_errors: (None: as the file says).
    if options.precheck_errors in ("skip", "fail"):
        pipeline = pipeline.with_precheck_errors(
            "fail" if options.precheck_errors == "fail" else "skip"
        )
    try:
        return pipeline.with_rates(limit_rates(options))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def limit_rates(options: RunOptions) -> dict[str, float]:
    """The rates of ``--limit NAME=RATE`` (calls per second) by name; raises UsageError."""
    from choreo_cli.pipeline.limits import parse_limit_option

    return _parsed_pairs(options.limit_values, parse_limit_option)


def warn_about_shares(pipeline: Pipeline, executor: Executor, console: Console) -> None:
    """Under the process and dask executors each worker has an equal share of each limit:
    one line on stderr for each whose share is below 1 (each worker still gets 1)."""
    if not pipeline.limits:
        return
    figures = executor.limit_figures()
    for limit in pipeline.limits:
        warning = limit.share_warning(figures.get(limit.name, {}).get("workers", 1))
        if warning is not None:
            console.warning(warning)


def set_overrides(options: RunOptions) -> dict[str, Any]:
    """The ``--set KEY=VALUE`` values; raises UsageError for one without ``=``."""
    from choreo_cli.pipeline.loader import parse_override

    return _parsed_pairs(options.set_values, parse_override)


def _parsed_pairs(texts: Iterable[str], parse: Callable[[str], tuple[str, T]]) -> dict[str, T]:
    """``NAME=VALUE`` options, each read by ``parse`` (ValueError for a bad one: a
    UsageError here); a later one wins."""
    pairs: dict[str, T] = {}
    for text in texts:
        try:
            name, value = parse(text)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        pairs[name] = value
    return pairs


def build_budget(options: RunOptions, pipeline: Pipeline) -> FailureBudget | None:
    """The failure budget: the file's ``halt:``, with ``--max-failures`` and
    ``--max-consecutive-failures`` over it; None when nothing can halt the run."""
    from choreo_cli.core.budget import FailureBudget

    budget = pipeline.halt
    if options.max_failures is None and options.max_consecutive_failures is None:
        return budget
    budget = budget or FailureBudget()
    if options.max_failures is not None:
        try:
            budget = budget.with_failures(options.max_failures)
        except ValueError as exc:
            raise UsageError(f"--max-failures: {exc}") from None
    if options.max_consecutive_failures is not None:
        budget = budget.with_consecutive(options.max_consecutive_failures)
    return budget if budget.active else None


def build_executor(options: RunOptions, pipeline: Pipeline) -> Executor:
    """The executor of the pipeline, with ``--workers`` (within the file's ``max_workers``),
    ``--executor``."""
    from choreo_cli.executors import ExecutorUnavailable
    from choreo_cli.executors import build_executor as build_named_executor

    overrides = set_overrides(options)
    maximum, at = pipeline.max_workers, pipeline.max_workers_at
    if options.workers is not None and maximum is not None and options.workers > maximum:
        where = "" if at is None else f"{at.file}:{at.line}:{at.column}: "
        raise UsageError(
            f"{where}--workers {options.workers} is more than this pipeline's max_workers: "
            f"{maximum} — give --workers {maximum} or fewer (the file allows no more records "
            "at once; raise max_workers there if what it writes to takes more)"
        )
    if options.scheduler is not None and options.executor != "dask":
        raise UsageError("--scheduler needs --executor dask")
    if options.workers is None and pipeline.workers > MAX_WORKERS:
        raise UsageError(
            f"{options.pipeline}: workers: {pipeline.workers} is above the limit of "
            f"{MAX_WORKERS} records at once — give fewer workers in the file, or --workers N"
        )
    try:
        return build_named_executor(
            options.executor,
            pipeline,
            workers=options.workers,
            overrides=overrides,
            dry_run=options.dry_run,
            scheduler=options.scheduler,
            # No timings: result lines have none and the summary uses the wall time.
            timings=False,
            # A worker whose record did not succeed stops itself, without waiting for us.
            fail_fast=options.fail_fast,
        )
    except ExecutorUnavailable as exc:
        raise UsageError(str(exc)) from None


def open_executor(executor: Executor, options: RunOptions) -> None:
    """Start the executor's workers and build resources (worker-scoped ones too), before
    the first record: a thread the system will not start is a UsageError then."""
    try:
        executor.open(prebuild_workers=True)
    except RuntimeError as exc:
        if not is_thread_start_failure(exc):
            raise
        with contextlib.suppress(Exception):
            executor.close()
        raise UsageError(
            f"cannot start {executor.workers} worker threads ({exc}): the system allows "
            "fewer threads; give fewer --workers"
        ) from None


def is_thread_start_failure(exc: RuntimeError) -> bool:
    """Whether ``exc`` is what ``threading.Thread.start`` raises when the system has no
    thread to give (too many threads, not enough memory for another stack)."""
    return str(exc).startswith("can't start new thread")


def open_input(options: RunOptions, *, streams: Streams, stack: contextlib.ExitStack) -> RunInput:
    """The ``--input`` file (closed with ``stack``), or stdin for ``-``.

    With ``--checkpoint`` the input must be a regular file, which is checked before it is
    opened: opening a FIFO waits for a writer, for ever if none comes.
    """
    if options.checkpoint is not None and options.input != "-":
        try:
            mode = os.stat(options.input).st_mode
        except OSError:
            mode = None  # said when it is opened
        if mode is not None and not stat.S_ISREG(mode):
            raise UsageError(
                f"--checkpoint needs a regular file as --input: {options.input} is "
                f"{_kind_of(mode)}, which cannot be read again on a rerun"
            )
    if options.input == "-":
        stdin = streams.stdin_binary
        if stdin is None:
            raise UsageError("no input: standard input is closed; give --input FILE")
        return RunInput(stdin, None, _is_regular(stdin))
    try:
        stream = open(options.input, "rb")  # noqa: SIM115 - closed by the exit stack
    except OSError as exc:
        raise UsageError(f"cannot read input {options.input}: {exc.strerror or exc}") from None
    stack.callback(stream.close)
    try:
        size: int | None = os.fstat(stream.fileno()).st_size
    except OSError:
        size = None
    return RunInput(stream, size, _is_regular(stream))


def _kind_of(mode: int) -> str:
    """What a file that is not a regular file is, for messages."""
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _is_regular(stream: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError):
        return False


def build_checkpoint(options: RunOptions, *, stack: contextlib.ExitStack) -> Checkpoint | None:
    """The ``--checkpoint`` file (closed with ``stack``); None without one."""
    if options.checkpoint is None:
        return None
    if options.input == "-":
        raise UsageError(
            "--checkpoint needs --input FILE: standard input cannot be read again on a rerun"
        )
    from choreo_cli.jsonl.checkpoint import Checkpoint

    checkpoint = Checkpoint.open(
        options.checkpoint, pipeline=options.pipeline, input_path=Path(options.input)
    )
    stack.callback(checkpoint.close)
    return checkpoint


def build_rejects(options: RunOptions) -> Rejects | None:
    """The ``--rejects`` file; None without one. Raises OSError when it cannot be made."""
    if options.rejects is None:
        return None
    from choreo_cli.cli.rejects import Rejects

    return Rejects(options.rejects, ordered=options.ordered)


def build_writer(
    options: RunOptions,
    *,
    streams: Streams,
    results: BinaryIO | None,
    checkpoint: Checkpoint | None,
    on_failure: Callable[[], None],
) -> ResultWriter:
    """The writer of the result lines: to ``--output``, or for ``-`` to ``results`` (a
    stream of its own on stdout's file, which the writer closes) or stdout as it is.
    Raises OSError when the output cannot be opened, or stdout was closed at start."""
    from choreo_cli.jsonl.writer import ResultWriter
    from choreo_cli.jsonl.writer import build_writer as build_file_writer

    # A dry run calls no job: it must not mark records finished for the real run.
    on_written = None if checkpoint is None or options.dry_run else checkpoint.mark
    if str(options.output) != "-":
        return build_file_writer(
            options.output,
            include_input=options.include_input,
            include_data=options.include_data,
            on_written=on_written,
            on_failure=on_failure,
        )
    if results is None and streams.stdout_closed_at_start:
        # Started with stdout closed (`>&-`): results would be lost.
        raise OSError(errno.EBADF, "standard output is closed; give --output FILE", "stdout")
    return ResultWriter(
        streams.stdout_binary if results is None else results,
        include_input=options.include_input,
        include_data=options.include_data,
        on_written=on_written,
        on_failure=on_failure,
        owns_stream=results is not None,
        name="stdout",
    )


def build_reader(
    source: RunInput,
    *,
    keep_raw: bool,
    checkpoint: Checkpoint | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> JsonlReader:
    """The reader of the input's lines (``keep_raw`` for ``--rejects`` and
    ``--include-input``); a line longer than ``max_line_bytes`` is an invalid item. It
    tells the checkpoint of a last line without a line ending, which is never marked
    finished: a producer may still be writing it."""
    from choreo_cli.jsonl.reader import JsonlReader

    return JsonlReader(
        source.stream,
        keep_raw=keep_raw,
        max_line_bytes=max_line_bytes,
        on_unterminated=None if checkpoint is None else checkpoint.keep_unfinished,
    )


def progress_kind(
    options: RunOptions, *, console: Console, streams: Streams, results: BinaryIO | None
) -> str | None:
    """Which progress display the run gets (``choreo_cli.cli.progress.progress_kind``):
    never a bar on the terminal the result lines go to."""
    from choreo_cli.cli.progress import progress_kind as kind_for
    from choreo_cli.cli.streams import is_terminal, path_is_terminal

    if options.progress is False or console.quiet:
        return None
    if str(options.output) == "-":
        # ``results``: stdout's own file, while descriptor 1 points at stderr.
        on_terminal = is_terminal(results if results is not None else streams.stdout)
    else:
        on_terminal = path_is_terminal(options.output)
    return kind_for(console, wanted=options.progress, results_on_terminal=on_terminal)


def track_positions(source: RunInput) -> tuple[InputPositions | None, RunInput]:
    """For the share of the input consumed: the input read through ``InputPositions``
    (one look per chunk read), when it is a regular file of known size; else None and
    ``source`` as it is (no share, no ETA)."""
    from choreo_cli.cli.progress import InputPositions

    if not source.regular or source.size is None:
        return None, source
    positions = InputPositions(source.stream, total=source.size)
    return positions, dataclasses.replace(source, stream=cast("BinaryIO", positions))


def build_progress(
    kind: str | None,
    *,
    console: Console,
    writer: ResultWriter,
    summary: RunSummary,
    positions: InputPositions | None,
) -> Progress:
    """The progress display ``kind`` (None: a do-nothing one), started: records finished
    are the lines handed to the writer, failed ones the summary's, the share of the input
    is where the last finished record ends."""
    from choreo_cli.cli.progress import RunFigures, start_progress

    if kind is None:
        from choreo_cli.cli.progress import NullProgress

        return NullProgress()
    figures = RunFigures(
        finished=lambda: writer.lines_queued,
        statuses=lambda: summary.counts,
        resumed=lambda: summary.resumed,
        positions=positions,
    )
    return start_progress(kind, console, figures)
