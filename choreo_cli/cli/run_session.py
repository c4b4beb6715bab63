"""The composition root of `choreo run`: what run_setup.py builds from RunOptions, put
together; the loop that runs the records (RunSession); the summary, the exit code."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from choreo_cli.cli.run_files import check_distinct_files, check_outputs_writable
from choreo_cli.cli.run_options import UsageError
from choreo_cli.cli.run_setup import (
    RunInput,
    build_budget,
    build_checkpoint,
    build_executor,
    build_progress,
    build_reader,
    build_rejects,
    build_writer,
    is_thread_start_failure,
    load_run_pipeline,
    open_executor,
    open_input,
    progress_kind,
    record_run_files,
    track_positions,
    warn_about_shares,
)
from choreo_cli.cli.run_state import RunState, handle_signals
from choreo_cli.core.exit_codes import ExitCode
from choreo_cli.errors import Interrupted, PipelineError, ResourceError
from choreo_cli.jsonl.checkpoint import CheckpointError

if TYPE_CHECKING:
    from choreo_cli.cli.console import Console
    from choreo_cli.cli.progress import Progress
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
