"""The composition root of `choreo run`: build the reader, writer and coordinator, run, exit code."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO

from choreo_cli.core.exit_codes import ExitCode
from choreo_cli.errors import PipelineError, ResourceError
from choreo_cli.jsonl.checkpoint import CheckpointError

if TYPE_CHECKING:
    from choreo_cli.cli.console import Console
    from choreo_cli.cli.run_options import RunOptions
    from choreo_cli.cli.streams import Streams
    from choreo_cli.core.result import Result
    from choreo_cli.executors.base import Executor
    from choreo_cli.jsonl.checkpoint import Checkpoint
    from choreo_cli.jsonl.writer import ResultWriter


class UsageError(Exception):
    """The command line, the pipeline or the input is unusable: exit 2 before any record ran."""


class _StopReading(BaseException):
    pass


_NOTHING = object()


class RunState:
    """What the signal handlers and the writer tell the run loop, and the input feed they stop."""

    def __init__(self, coordinator: Executor) -> None:
        self.coordinator = coordinator
        self.signal: int | None = None
        self.stop = False
        self.reading = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            # A second signal: exit at once (README "Exit codes"), and take the worker
            # processes down too (they ignore SIGINT and SIGTERM, and would finish their records).
            self.coordinator.kill_workers()
            os._exit(128 + signum)
        self.signal = signum
        self.halt(f"interrupted by {signal.Signals(signum).name}")

    def on_output_failure(self) -> None:
        # Called from the writer's thread: set flags only, then wake the main thread with
        # a signal if it is blocked reading an idle input (only a signal handler may raise
        # into it).
        self.stop = True
        self.coordinator.interrupt("the output failed")
        if self.reading:
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def on_wake(self, signum: int, frame: FrameType | None) -> None:
        if self.stop and self.reading:
            raise _StopReading

    def halt(self, reason: str) -> None:
        """Stop the run from a signal handler (main thread)."""
        self.stop = True
        self.coordinator.interrupt(reason)
        if self.reading:
            # The main thread is blocked reading input (an idle pipe): unblock it.
            raise _StopReading

    def feed(self, items: Iterable[Any]) -> Iterator[Any]:
        """The input items, until the run is told to stop (signal, closed output, fail-fast)."""
        iterator = iter(items)
        while not self.stop:
            item: Any = _NOTHING
            self.reading = True
            try:
                item = next(iterator)
            except StopIteration:
                return
            except _StopReading:
                if item is _NOTHING:
                    return
                # The signal came just after the item was read: it still gets its
                # (cancelled) result, as every record read does.
            finally:
                self.reading = False
            yield item


@contextlib.contextmanager
def _signals(state: RunState) -> Iterator[None]:
    previous = {
        sig: signal.signal(sig, state.on_signal)
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, state.on_wake)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _open_input(path: str, streams: Streams) -> tuple[BinaryIO, int | None]:
    if path == "-":
        stdin = streams.stdin_binary
        if stdin is None:
            raise UsageError("no input: standard input is closed; give --input FILE")
        return stdin, None
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the caller's exit stack
    except OSError as exc:
        raise UsageError(f"cannot read input {path}: {exc.strerror or exc}") from None
    try:
        size = os.fstat(stream.fileno()).st_size
    except OSError:
        size = None
    return stream, size


def _check_summary_path(path: Path | None) -> None:
    # The summary is written after the run: a path that cannot work is better refused now,
    # before any record runs, than found out at the end.
    if path is not None and not path.parent.is_dir():
        raise UsageError(
            f"cannot write the summary to {path}: no directory {path.parent}"
        )


def _check_distinct_files(options: RunOptions, streams: Streams) -> None:
    """Refuse a regular file named for two roles: an output that is the input would be
    emptied before a record is read, and two outputs would overwrite each other.

    ``-`` stands for the file behind stdin or stdout (``-o in.jsonl < in.jsonl``)."""
    roles = [
        ("--input", options.input, streams.stdin_descriptor(), "standard input"),
        ("--output", options.output, streams.stdout_descriptor(), "standard output"),
        ("--rejects", options.rejects, None, ""),
        ("--summary-json", options.summary_json, None, ""),
        ("--checkpoint", options.checkpoint, None, ""),
    ]
    seen: dict[tuple[int, int], str] = {}
    for flag, path, fd, stream in roles:
        if path is None:
            continue
        standard = str(path) == "-" and stream != ""
        try:
            if standard:
                if fd is None:
                    continue  # closed, or in memory: no file to share
                info = os.fstat(fd)
            else:
                info = os.stat(path)
        except (OSError, ValueError):
            continue  # a file still to be made, or an input that cannot be read (said later)
        if not stat.S_ISREG(info.st_mode):
            continue  # /dev/null, a pipe, a terminal: any number of roles may share one
        key = (info.st_dev, info.st_ino)
        name = stream if standard else f"{flag} {path}"
        if key in seen:
            raise UsageError(
                f"{name} is the same file as {seen[key]}: give each its own file"
            )
        seen[key] = name


def _is_regular(stream: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError):
        return False


def _open_checkpoint(options: RunOptions) -> Checkpoint | None:
    if options.checkpoint is None:
        return None
    if options.input == "-":
        raise UsageError(
            "--checkpoint needs --input FILE: standard input cannot be read again on a rerun"
        )
    from choreo_cli.jsonl.checkpoint import Checkpoint

    return Checkpoint.open(
        options.checkpoint, pipeline=options.pipeline, input_path=Path(options.input)
    )


def _build_coordinator(options: RunOptions) -> Executor:
    from choreo_cli.pipeline.loader import load_pipeline, parse_override

    overrides: dict[str, Any] = {}
    for text in options.set_values:
        try:
            key, value = parse_override(text)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        overrides[key] = value
    if not options.pipeline.is_file():
        what = "is not a file" if options.pipeline.exists() else "does not exist"
        raise UsageError(f"pipeline file {options.pipeline} {what}")
    pipeline = load_pipeline(options.pipeline, overrides=overrides)
    return _build_executor(options, pipeline, overrides)


def _build_executor(
    options: RunOptions, pipeline: Any, overrides: dict[str, Any]
) -> Executor:
    from choreo_cli.executors import ExecutorUnavailable, build_executor

    if options.scheduler is not None and options.executor != "dask":
        raise UsageError("--scheduler needs --executor dask")
    try:
        executor = build_executor(
            options.executor,
            pipeline,
            workers=options.workers,
            overrides=overrides,
            dry_run=options.dry_run,
            scheduler=options.scheduler,
            # No timings: result lines have none and the summary uses the wall time.
            timings=False,
        )
    except ExecutorUnavailable as exc:
        raise UsageError(str(exc)) from None
    return executor


def execute(options: RunOptions, *, streams: Streams) -> ExitCode:
    """Run `choreo run` as ``options`` say, over ``streams``; its exit code."""
    from choreo_cli.cli.console import build_console

    console = build_console(streams, quiet=options.quiet)
    try:
        console.setup_logging(options.log_level)
    except ValueError as exc:
        console.error(f"--log-level: {exc}")
        return ExitCode.USAGE
    with contextlib.ExitStack() as stack:
        results: BinaryIO | None = None
        try:
            # Before stdout is diverted: ``-`` is checked as the file behind it.
            _check_distinct_files(options, streams)
            if str(options.output) == "-":
                results = streams.divert_stdout(stack)
            coordinator = _build_coordinator(options)
            _check_summary_path(options.summary_json)
            stream, size = _open_input(options.input, streams)
            if options.input != "-":
                stack.callback(stream.close)
            checkpoint = _open_checkpoint(options)
            if checkpoint is not None:
                stack.callback(checkpoint.close)
            coordinator.open(prebuild_workers=True)
        except UsageError as exc:
            console.error(str(exc))
            return ExitCode.USAGE
        except PipelineError as exc:
            for problem in exc.problems:
                console.error(str(problem), prefix=False)
            return ExitCode.USAGE
        except ResourceError as exc:
            console.error(str(exc))
            with contextlib.suppress(ResourceError):
                coordinator.close()
            return ExitCode.USAGE
        except CheckpointError as exc:
            console.error(str(exc))
            return ExitCode.USAGE
        state = RunState(coordinator)
        # Handled until the summary is out: a signal during resource teardown must not
        # raise KeyboardInterrupt into it (or kill the process) but end with 130/143.
        stack.enter_context(_signals(state))
        return _run(
            options,
            streams,
            console,
            coordinator,
            stream,
            size,
            checkpoint,
            state,
            results,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _run(
    options: RunOptions,
    streams: Streams,
    console: Console,
    coordinator: Executor,
    stream: BinaryIO,
    size: int | None,
    checkpoint: Checkpoint | None,
    state: RunState,
    results: BinaryIO | None = None,
) -> ExitCode:
    from choreo_cli.core.summary import RunSummary
    from choreo_cli.jsonl.reader import JsonlReader

    summary = RunSummary([step.name for step in coordinator.steps])
    rejects: _Rejects | None = None
    try:
        try:
            if options.rejects is not None:
                rejects = _Rejects(options.rejects, ordered=options.ordered)
            writer = build_writer(
                options,
                streams=streams,
                results=results,
                checkpoint=checkpoint,
                on_failure=state.on_output_failure,
            )
        except OSError as exc:
            console.error(
                f"cannot write {exc.filename or options.output}: {exc.strerror or exc}"
            )
            if rejects is not None:
                rejects.close()
            return ExitCode.USAGE
        reader = JsonlReader(stream, keep_raw=rejects is not None)
        progress = console.build_progress(enabled=options.progress, total_bytes=size)
        clean_line = _clean_line(options, coordinator, checkpoint, writer)
        try:
            if clean_line is not None:
                _consume_lines(
                    options,
                    coordinator,
                    state,
                    reader,
                    writer,
                    summary,
                    progress,
                    rejects,
                    clean_line=clean_line,
                    regular=_is_regular(stream),
                )
            else:
                items: Iterable[Any] = reader
                if checkpoint is not None:
                    items = checkpoint.skip_finished(reader, summary.count_resumed)
                if options.fail_fast or not _is_regular(stream):
                    # Only a pipe can block a read for ever, and only fail-fast stops
                    # reading on its own: a regular file needs no guard around each record.
                    items = state.feed(items)
                _consume(
                    options,
                    coordinator,
                    state,
                    items,
                    reader,
                    writer,
                    summary,
                    progress,
                    rejects,
                )
        finally:
            progress.close()
            writer.close()
            if rejects is not None:
                rejects.close()
                if rejects.error is not None:
                    summary.record_output_failure()
                    console.error(
                        f"cannot write rejects to {rejects.path}: "
                        f"{rejects.error.strerror or rejects.error}"
                    )
    finally:
        try:
            coordinator.close()
        except ResourceError as exc:
            summary.record_teardown_failure()
            console.error(f"{exc} (results may not be durable)")
    summary.finish()
    if state.signal is None and not writer.failed and coordinator.interrupted:
        # Nothing here interrupted the run: a callable raised KeyboardInterrupt, which
        # interrupts the whole run like Ctrl-C (README "Exit codes"): exit 130.
        state.signal = signal.SIGINT
    if state.signal is not None:
        summary.record_signal(state.signal)
    if writer.broken:
        summary.record_broken_pipe()
    elif writer.error is not None:
        summary.record_output_failure()
        console.error(
            writer.error_message or f"cannot write {writer.name}: {writer.error}"
        )
    if not options.quiet and not summary.broken_pipe:
        console.render_summary(summary)
    if options.summary_json is not None:
        try:
            summary.write_json(options.summary_json)
        except OSError as exc:
            console.error(
                f"cannot write the summary to {options.summary_json}: {exc.strerror}"
            )
            summary.record_output_failure()
    return summary.exit_code


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
        raise OSError(
            errno.EBADF, "standard output is closed; give --output FILE", "stdout"
        )
    return ResultWriter(
        streams.stdout_binary if results is None else results,
        include_input=options.include_input,
        include_data=options.include_data,
        on_written=on_written,
        on_failure=on_failure,
        owns_stream=results is not None,
        name="stdout",
    )


def _result_handler(
    options: RunOptions,
    state: RunState,
    reader: Any,
    writer: Any,
    summary: Any,
    progress: Any,
    rejects: _Rejects | None,
) -> Callable[[Result], bool]:
    """What happens to each Result: written, counted, shown, kept as a reject; True when
    the run must start no other record (``--fail-fast``)."""
    write = writer.write
    tally = _tally_handler(reader, summary, progress)
    fail_fast = options.fail_fast

    def handle(result: Result) -> bool:
        write(result)
        tally(result)
        if result.status != "succeeded":
            if rejects is not None:
                rejects.add(result)
            if fail_fast:
                state.stop = True
                return True
        return False

    return handle


def _tally_handler(
    reader: Any, summary: Any, progress: Any
) -> Callable[[Result], None]:
    """What happens to a record whose line a worker wrote: counted and shown."""
    add = summary.add
    advance = progress.advance if progress.enabled else None

    def tally(result: Result) -> None:
        add(result)
        if advance is not None:
            advance(result, reader.bytes_read)

    return tally


def _consume(
    options: RunOptions,
    coordinator: Executor,
    state: RunState,
    items: Iterable[Any],
    reader: Any,
    writer: Any,
    summary: Any,
    progress: Any,
    rejects: _Rejects | None,
) -> None:
    handle = _result_handler(options, state, reader, writer, summary, progress, rejects)
    for result in coordinator.run_many(items, ordered=options.ordered):
        # With fail-fast the records already started still end and get their lines.
        handle(result)


def _clean_line(
    options: RunOptions,
    coordinator: Executor,
    checkpoint: Checkpoint | None,
    writer: Any,
) -> bytes | None:
    """The clean-line template when ``run_lines`` can run this command, else None.

    ``run_lines`` writes a clean record's line from its index and line number alone.
    The thread executor has it for one worker (the fused serial loop); the process and
    Dask executors for any number (their workers parse the lines).
    """
    if checkpoint is not None or (
        options.executor == "thread" and coordinator.workers != 1
    ):
        return None
    line: bytes | None = writer.clean_line(coordinator.clean_steps())
    return line


def _consume_lines(
    options: RunOptions,
    coordinator: Executor,
    state: RunState,
    reader: Any,
    writer: Any,
    summary: Any,
    progress: Any,
    rejects: _Rejects | None,
    *,
    clean_line: bytes,
    regular: bool,
) -> None:
    """``_consume``'s work for the fused loop: only records with errors come back as Results."""
    emit = _result_handler(options, state, reader, writer, summary, progress, rejects)
    batches: Iterable[list[bytes]] = reader.iter_line_lists()
    if not regular:
        # Only a pipe can block a read for ever: a regular file needs no guard.
        batches = state.feed(batches)
    steps = coordinator.clean_steps()
    runs = coordinator.run_lines(
        batches,
        clean_line=clean_line,
        put=writer.put,
        emit=emit,
        keep_raw=rejects is not None,
        # Process and Dask workers write the lines of succeeded records with skipped jobs.
        tally=_tally_handler(reader, summary, progress),
    )
    for clean in runs:
        summary.add_clean(clean, steps)
        writer.drain_if_full()
        if progress.enabled:
            progress.advance_succeeded(clean, reader.bytes_read)


class _Rejects:
    """The input lines of records that did not succeed, in input order (re-runnable).

    A write error (disk full) is kept in ``error``, not raised: the run goes on and the
    exit code says so.
    """

    def __init__(self, path: Path, *, ordered: bool) -> None:
        self.path = path
        self.error: OSError | None = None
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._ordered = ordered
        self._held: list[tuple[int, bytes]] = []

    def add(self, result: Result) -> None:
        raw = result.raw
        if raw is None or self.error is not None:
            return
        if self._ordered:
            self._write(raw)
        else:
            self._held.append((result.index, raw))

    def _write(self, raw: bytes) -> None:
        try:
            self._file.write(raw)
        except OSError as exc:
            self.error = exc

    def close(self) -> None:
        for _, raw in sorted(self._held):
            if self.error is not None:
                break
            self._write(raw)
        self._held.clear()
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or exc
