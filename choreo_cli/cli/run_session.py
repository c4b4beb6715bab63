"""The composition root of `choreo run`: build the collaborators from RunOptions, run, exit code."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import os
import signal
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from choreo_cli.cli.run_files import check_distinct_files, check_outputs_writable
from choreo_cli.cli.run_options import MAX_LINE_BYTES, MAX_WORKERS, UsageError
from choreo_cli.cli.run_state import RunState, handle_signals
from choreo_cli.core.exit_codes import ExitCode
from choreo_cli.errors import Interrupted, PipelineError, ResourceError
from choreo_cli.jsonl.checkpoint import CheckpointError

if TYPE_CHECKING:
    from choreo_cli.cli.console import Console
    from choreo_cli.cli.progress import InputPositions, Progress
    from choreo_cli.cli.rejects import Rejects
    from choreo_cli.cli.report import RunOutputs
    from choreo_cli.cli.run_options import RunOptions
    from choreo_cli.cli.streams import Streams
    from choreo_cli.core.budget import FailureBudget, FailureCounter, Halt
    from choreo_cli.core.items import InvalidLine, Record
    from choreo_cli.core.result import Result
    from choreo_cli.core.summary import RunSummary
    from choreo_cli.executors.base import Executor
    from choreo_cli.jsonl.checkpoint import Checkpoint
    from choreo_cli.jsonl.reader import JsonlReader
    from choreo_cli.jsonl.writer import ResultWriter
    from choreo_cli.pipeline.definitions import Pipeline


T = TypeVar("T")


def execute(options: RunOptions, *, streams: Streams) -> ExitCode:
    """Run `choreo run` as ``options`` say, over ``streams``; the exit code is the summary's.

    Everything unusable before a record ran (the command line, the pipeline, the input,
    an output that cannot be opened) is said on stderr and gives ``ExitCode.USAGE``;
    ``--summary-json`` then holds the error (unless it is the file in trouble), so that
    what reads it never reads the summary of an earlier run.
    """
    from choreo_cli.cli.console import build_console

    console = build_console(streams, quiet=options.quiet)
    try:
        # Before stdout is diverted: ``-`` is checked as the file behind it.
        check_distinct_files(options, streams=streams)
        check_outputs_writable(options)
    except UsageError as exc:
        return refuse(
            options, console, str(exc), summary="--summary-json" not in exc.files, files=exc.files
        )
    try:
        console.setup_logging(options.log_level)
    except ValueError as exc:
        return refuse(options, console, f"--log-level: {exc}")
    with contextlib.ExitStack() as stack:
        results: BinaryIO | None = None
        checkpoint: Checkpoint | None = None
        executor: Executor | None = None
        try:
            if str(options.output) == "-":
                results = streams.divert_stdout(stack)
            pipeline = load_run_pipeline(options)
            budget = build_budget(options, pipeline)
            executor = build_executor(options, pipeline)
            warn_about_shares(pipeline, executor, console)
            source = open_input(options, streams=streams, stack=stack)
            checkpoint = build_checkpoint(options, stack=stack)
            open_executor(executor, options)
        except UsageError as exc:
            return refuse(options, console, str(exc), executor=executor)
        except PipelineError as exc:
            problems = [str(problem) for problem in exc.problems]
            return refuse(options, console, "\n".join(problems), problems=problems)
        except ResourceError as exc:
            assert executor is not None
            with contextlib.suppress(ResourceError):
                executor.close()
            # No record ran: a checkpoint made now would only hold the input's fingerprint.
            if checkpoint is not None:
                checkpoint.discard()
            return refuse(options, console, str(exc), executor=executor)
        except CheckpointError as exc:
            return refuse(options, console, str(exc), executor=executor)
        state = RunState(executor, say=functools.partial(console.error, prefix=False))
        # Handled until the summary is out: a signal during resource teardown must not
        # raise KeyboardInterrupt into it (or kill the process) but end with 130/143.
        stack.enter_context(handle_signals(state))
        return _run(
            options,
            streams=streams,
            console=console,
            executor=executor,
            state=state,
            source=source,
            checkpoint=checkpoint,
            results=results,
            budget=budget,
            pipeline_name=pipeline.name or options.pipeline.stem,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def refuse(
    options: RunOptions,
    console: Console,
    message: str,
    *,
    problems: Sequence[str] = (),
    executor: Executor | None = None,
    summary: bool = True,
    files: tuple[str, ...] = (),
) -> ExitCode:
    """Exit 2 before any record ran: ``message`` on stderr (or ``problems``, positioned
    messages printed as they are), and in ``--summary-json`` as the summary's ``error``
    (zero counts), unless ``summary`` is False (that file is the one in trouble, which
    ``message`` says); the metrics and the report too (but ``files``, those in trouble)."""
    from choreo_cli.cli.report import RunOutputs, wanted
    from choreo_cli.core.summary import RunSummary

    if problems:
        for problem in problems:
            console.error(problem, prefix=False)
    else:
        console.error(message)
    json_path = options.summary_json if summary else None
    if json_path is None and not wanted(options, skip=files):
        return ExitCode.USAGE
    refused = RunSummary([] if executor is None else [step.name for step in executor.steps])
    record_run_files(refused, options)
    refused.record_usage_error(message)
    refused.finish()
    try:
        if json_path is not None:
            refused.write_json(json_path)
    except OSError as exc:
        console.error(f"cannot write the summary to {options.summary_json}: {exc.strerror or exc}")
    RunOutputs(options, pipeline=None, skip=files).write(refused, console)
    return refused.exit_code


def _run(
    options: RunOptions,
    *,
    streams: Streams,
    console: Console,
    executor: Executor,
    state: RunState,
    source: RunInput,
    checkpoint: Checkpoint | None,
    results: BinaryIO | None,
    budget: FailureBudget | None,
    pipeline_name: str,
) -> ExitCode:
    from choreo_cli.cli.report import RunOutputs
    from choreo_cli.core.summary import RunSummary

    summary = RunSummary([step.name for step in executor.steps])
    record_run_files(summary, options)
    outputs = RunOutputs(options, pipeline=pipeline_name)
    try:
        rejects: Rejects | None = None
        try:
            rejects = build_rejects(options)
            writer = build_writer(
                options,
                streams=streams,
                results=results,
                checkpoint=checkpoint,
                on_failure=state.on_output_failure,
            )
        except (OSError, RuntimeError) as exc:
            # Every output was found writable before: something changed since; or the
            # writer's thread could not start.
            if isinstance(exc, OSError):
                message = f"cannot write {exc.filename or options.output}: {exc.strerror or exc}"
            elif is_thread_start_failure(exc):
                message = f"cannot start the thread that writes the results: {exc}"
            else:
                raise
            if rejects is not None:
                rejects.discard()
            if checkpoint is not None:
                checkpoint.discard()
            return refuse(options, console, message, executor=executor)
        shown = progress_kind(options, console=console, streams=streams, results=results)
        positions = None
        if shown is not None:
            positions, source = track_positions(source)
        session = RunSession(
            options=options,
            console=console,
            executor=executor,
            state=state,
            # Each line's bytes for --rejects, and for --include-input: a record orjson
            # cannot write as it was read (an integer past 64 bits) is written as its line.
            reader=build_reader(
                source,
                keep_raw=rejects is not None or options.include_input,
                checkpoint=checkpoint,
                max_line_bytes=options.max_line_bytes,
            ),
            writer=writer,
            summary=summary,
            progress=build_progress(
                shown, console=console, writer=writer, summary=summary, positions=positions
            ),
            checkpoint=checkpoint,
            rejects=rejects,
            regular_input=source.regular,
            budget=budget,
        )
        # The call times so far, for what reads the summary during the run.
        summary.watch_times(executor.call_times)
        with outputs.periodic(summary):
            session.run()
    finally:
        try:
            executor.close()
        except ResourceError as exc:
            summary.record_teardown_failure()
            console.error(f"{exc} (results may not be durable)")
        summary.record_limits(executor.limit_figures())
        summary.add_times(executor.call_times())
        summary.watch_times(None)
    return session.finish(outputs)


# -- the collaborators ------------------------------------------------------------------------


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


# -- the run ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSession:
    """One `choreo run`: its collaborators, and the loop that joins them.

    ``run()`` sends every record through the executor; each result is written,
    counted, shown and kept as a reject. ``finish()`` says what went wrong on stderr,
    prints the summary and gives the exit code.
    """

    options: RunOptions
    console: Console
    executor: Executor
    state: RunState
    reader: JsonlReader
    writer: ResultWriter
    summary: RunSummary
    progress: Progress
    checkpoint: Checkpoint | None
    rejects: Rejects | None
    regular_input: bool
    # The failure budget (``halt:``, ``--max-failures``...), None without one.
    budget: FailureBudget | None = None

    def run(self) -> None:
        """Run every record; the progress bar, the writer and the rejects are closed after."""
        try:
            clean_line = self._clean_line()
            if clean_line is not None:
                self._consume_lines(clean_line)
            else:
                self._consume()
        finally:
            self.state.announced()  # an interruption's line before the last progress line
            self.progress.close()
            self.writer.close()
            rejects = self.rejects
            if rejects is not None:
                rejects.close()
                if rejects.left_out:
                    first = rejects.first_left_out
                    self.console.warning(
                        f"{rejects.left_out} input line(s) longer than --max-line-bytes "
                        f"({self.options.max_line_bytes}) are not in {rejects.path}"
                        + (f" (first: line {first})" if first is not None else "")
                        + ": their bytes were not kept"
                    )
                if rejects.error is not None:
                    self.summary.record_output_failure()
                    self.console.error(
                        f"cannot write rejects to {rejects.path}: "
                        f"{rejects.error.strerror or rejects.error}"
                    )

    def finish(self, outputs: RunOutputs | None = None) -> ExitCode:
        """Once the executor is closed: what went wrong, the summary (and ``outputs``: the
        metrics and the report), the exit code."""
        summary, state, writer, console = self.summary, self.state, self.writer, self.console
        summary.finish()
        state.announced()  # a signal during the teardown: its line before the summary
        if state.signal is None and not writer.failed and self.executor.interrupted:
            # Nothing here interrupted the run: a callable raised KeyboardInterrupt, which
            # interrupts the whole run like Ctrl-C (README "Exit codes"): exit 130.
            state.signal = signal.SIGINT
            console.error(
                "interrupted (KeyboardInterrupt raised by a step): no new record started; "
                "records in flight stopped before their next step",
                prefix=False,
            )
        if state.signal is not None:
            summary.record_signal(state.signal)
        if writer.broken:
            summary.record_broken_pipe()
        elif writer.error is not None:
            summary.record_output_failure()
            console.error(writer.error_message or f"cannot write {writer.name}: {writer.error}")
        if not self.options.quiet and not summary.broken_pipe:
            console.render_summary(summary)
        if self.options.summary_json is not None:
            try:
                summary.write_json(self.options.summary_json)
            except OSError as exc:
                console.error(
                    f"cannot write the summary to {self.options.summary_json}: {exc.strerror}"
                )
                summary.record_output_failure()
        if outputs is not None:
            outputs.write(summary, console)
        # Last, and always (-q too): each is likely a bug that let records through unseen.
        from choreo_cli.cli.console import format_precheck_warnings

        for line in format_precheck_warnings(summary):
            console.error(line, prefix=False)
        return summary.exit_code

    def _clean_line(self) -> bytes | None:
        """The clean-line template when ``run_lines`` can run this command, else None.

        ``run_lines`` writes a clean record's line from its index and line number alone.
        The thread executor has it for one worker (the fused serial loop); the process and
        Dask executors for any number (their workers parse the lines).
        """
        if (
            self.checkpoint is not None
            or (self.options.executor != "thread" and self.budget is not None)
            or (self.options.executor == "thread" and self.executor.workers != 1)
        ):
            return None
        return self.writer.clean_line(self.executor.clean_steps())

    def _handler(self, counter: FailureCounter | None = None) -> Callable[[Result], bool]:
        """What happens to each Result: written, counted, shown, kept as a reject; True when
        the run must start no other record (``--fail-fast``, the failure budget spent).
        ``counter``: the failure budget's, for the fused loop (see ``_budget_handler``)."""
        write = self.writer.write
        tally = self._tally()
        rejects = self.rejects
        halt = self._halt
        fail_fast = self.options.fail_fast

        def handle(result: Result) -> bool:
            write(result)
            tally(result)
            if result.status != "succeeded":
                if rejects is not None:
                    rejects.add(result)
                if fail_fast and not stopped_before(result):
                    halt(fail_fast_halt(result))
                    return True
            return False

        if self.budget is None:
            return handle
        return self._budget_handler(handle, counter)

    def _budget_handler(
        self, handle: Callable[[Result], bool], counter: FailureCounter | None
    ) -> Callable[[Result], bool]:
        """``handle`` with a failure budget: every Result is counted against it, in the
        order they come (the order records end with --unordered).

        With ``counter`` (the fused serial loop, where a clean record comes back as no
        Result), the records between two Results ended without failing: a Result's index
        says how many, and they are counted first, in input order as they ran.
        """
        assert self.budget is not None
        fused = counter is not None
        counter = counter or self.budget.counter()
        observe, observe_clean = counter.observe, counter.observe_clean
        halt = self._halt

        def counted(result: Result) -> bool:
            if handle(result):
                return True
            spent = observe_clean(result.index - counter.ended) if fused else None
            spent = spent or observe(result)
            if spent is not None:
                halt(spent)
                return True
            return False

        return counted

    def _halt(self, halt: Halt) -> None:
        """Start no other record: no input is read any more, and no worker starts a record
        it holds; records in flight finish. The first halt is the one the summary keeps."""
        if self.summary.halted is not None:
            return
        self.summary.record_halt(halt)
        self.state.stop = True
        self.executor.halt(halt.reason)
        # Said when it happens, always (-q too): the run will not take up all of its input.
        self.console.error(f"halted: {halt.reason}", prefix=False)

    def _tally(self) -> Callable[[Result], None]:
        """What happens to a record whose line a worker wrote: counted and shown."""
        # SummarizedResult wants a settable ``status: str`` and ``steps -> dict[str, str]``;
        # Result has read-only Literal ones: the protocol is too narrow, not the call. (The
        # progress display reads the counts when it is drawn: nothing more per record.)
        return self.summary.add  # type: ignore[return-value]

    def _consume(self) -> None:
        """Records as Results, one per input item."""
        items: Iterable[Record | InvalidLine] = self.reader
        if self.checkpoint is not None:
            items = self.checkpoint.skip_finished(items, self.summary.count_resumed)
        if self.options.fail_fast or self.budget is not None or not self.regular_input:
            # Only a pipe can block a read for ever, and only a halt (fail-fast, the
            # budget) stops reading on its own: a regular file needs no guard around each record.
            items = self.state.feed(items)
        handle = self._handler()
        for result in self.executor.run_many(items, ordered=self.options.ordered):
            # With fail-fast the records already started still end and get their lines.
            handle(result)

    def _consume_lines(self, clean_line: bytes) -> None:
        """``_consume``'s work for the fused loop: only records with errors come back as
        Results; clean ones are written from ``clean_line`` and only counted."""
        from choreo_cli.jsonl.reader import cut_after_record

        reader, writer, summary = self.reader, self.writer, self.summary
        counter = self.budget.counter() if self.budget is not None else None
        emit = self._handler(counter)
        batches: Iterable[list[bytes]] = reader.iter_line_lists()
        if counter is not None and counter.budget.min_records > 1:
            # A list ends at the record that brings the count to min_records: the budget
            # is looked at there, where failures before it may turn out to be too many.
            batches = cut_after_record(batches, counter.budget.min_records)
        if not self.regular_input:
            # Only a pipe can block a read for ever: a regular file needs no guard.
            batches = self.state.feed(batches)
        steps = self.executor.clean_steps()
        runs = self.executor.run_lines(
            batches,
            clean_line=clean_line,
            put=writer.put,
            emit=emit,
            keep_raw=self.rejects is not None,
            # Process and Dask workers write the lines of succeeded records with skipped jobs.
            tally=self._tally(),
        )
        for clean in runs:
            summary.add_clean(clean, steps)
            writer.drain_if_full()
            if counter is not None and summary.halted is None:
                # The records of this list that came back as no Result ended clean.
                spent = counter.observe_clean(summary.total - counter.ended)
                if spent is not None:
                    self._halt(spent)
                    break  # start no other list (the runner ends with this call)


def stopped_before(result: Result) -> bool:
    """Whether ``result`` is a record cancelled because the run was stopping (a worker
    that saw a failure halts the others before choreo hears of it): not the cause."""
    error = result.error
    return error is not None and isinstance(error.exception, Interrupted)


def fail_fast_halt(result: Result) -> Halt:
    """Why ``--fail-fast`` halted the run at ``result`` (a record that did not succeed)."""
    from choreo_cli.core.budget import Halt

    what = {"failed": "failed", "cancelled": "was cancelled", "invalid": "is not valid"}
    where = f"line {result.line}" if result.line is not None else f"record {result.index}"
    because = "" if result.error is None else f" ({result.error.type})"
    verb = what.get(result.status, result.status)
    return Halt(f"--fail-fast: the record at {where} {verb}{because}", result.line)
