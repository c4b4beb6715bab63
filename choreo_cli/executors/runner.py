"""The worker side of the process and Dask executors: load the pipeline, run batches of records."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

import orjson

from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.executors.base import (
    HALTED,
    INTERRUPTED,
    ExecutorUnavailable,
    PipelineSpec,
    file_digest,
)
from choreo_cli.executors.portable import Chunk, ChunkWriter, export_result
from choreo_cli.jsonl.lines import SkipLines
from choreo_cli.jsonl.numbers import has_wide_digits, loads_exact
from choreo_cli.jsonl.reader import reason_for

if TYPE_CHECKING:
    from choreo_cli.core.result import Result

# A batch's results go back in chunks at least this often (result lines within ~100 ms).
FLUSH_INTERVAL = 0.05

# What the parent sends for a batch: (first index, positions or None, values, lines or None).
# Positions are offsets from the first index, None when they are 0, 1, 2... For run_lines
# ``values`` is bytes: the input lines joined with newlines, parsed here.
BatchArgs = tuple[int, Sequence[int] | None, Sequence[Any], Sequence[int | None] | None]


class StopFlag:
    """A worker's stop flag when the worker program gives none: ``value`` as in base.py
    (RUNNING, HALTED, INTERRUPTED), read before each record."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class BatchRunner:
    """One worker's pipeline: loaded from the file, resources built, batches run through it.

    Per-record semantics are the Coordinator's: this only feeds it records and exports
    the Results. The thread that opened the runner uses the coordinator's own worker (its
    worker-scoped resources were built by ``open()``); other threads get their own.

    ``stop.value`` (see base.py: RUNNING, HALTED, INTERRUPTED) is read before each
    record: once it is set, a batch ends there, and the parent gives the records it did
    not run their cancelled Results. The process executor shares one flag between choreo
    and all its workers (shared memory); a Dask worker has one per run. The runner raises
    it itself when a step raised KeyboardInterrupt (INTERRUPTED: the run is interrupted)
    and, with ``spec.fail_fast``, after a record that did not succeed (HALTED), so that
    no later record of its batch starts.
    """

    def __init__(self, spec: PipelineSpec, stop: Any = None) -> None:
        from choreo_cli.pipeline.loader import load_pipeline

        try:
            digest = file_digest(spec.path)
        except OSError as exc:
            raise ExecutorUnavailable(
                f"this worker cannot read the pipeline file {spec.path}: {exc.strerror or exc}"
            ) from None
        if digest != spec.digest:
            raise ExecutorUnavailable(
                f"the pipeline file {spec.path} on this worker differs from the one choreo "
                "was started with; give every worker the same copy"
            )
        pipeline = (
            load_pipeline(spec.path, overrides=spec.overrides)
            .with_rates(spec.limit_rates)
            .with_precheck_errors(spec.precheck_errors)
        )
        self.coordinator = pipeline.coordinator(
            workers=1, dry_run=spec.dry_run, timings=False, limit_workers=spec.limit_workers
        )
        # Worker-scoped resources too: a failing factory is reported before any record.
        self.coordinator.open(prebuild_workers=True)
        # Every batch of the runner is one run of the coordinator: once interrupted (by the
        # parent, or a step's KeyboardInterrupt), it stays so, and the records in flight on
        # other threads (Dask) stop before their next step, until close().
        self._run = contextlib.ExitStack()
        self._run.enter_context(self.coordinator.running())
        self._steps = len(self.coordinator.steps)
        self._skip_lines = SkipLines()
        self._owner = threading.get_ident()
        self._local = threading.local()
        self._lock = threading.Lock()
        self.stop: Any = StopFlag() if stop is None else stop
        self._fail_fast = spec.fail_fast
        self._told = False  # interrupted by the parent (not by a step's KeyboardInterrupt)

    def interrupt(self, reason: str = "interrupted") -> None:
        """Records in flight stop before their next step; later ones do not start."""
        self._told = True
        self._raise_stop(INTERRUPTED)
        self.coordinator.interrupt(reason)

    def halt(self) -> None:
        """No record starts after the ones in flight, which finish."""
        self._raise_stop(HALTED)

    def _raise_stop(self, level: int) -> None:
        stop = self.stop
        if stop.value < level:
            stop.value = level

    def _unclean(self, result: Result) -> None:
        """After a record that did not end clean: raise the stop flag if it says the run
        must stop. The coordinator interrupted without the parent telling it means a step
        raised KeyboardInterrupt, which interrupts the whole run (the parent learns it
        from the flag); with fail-fast, a record that did not succeed halts it."""
        if not self._told and self.coordinator.interrupted:
            self._raise_stop(INTERRUPTED)
        elif self._fail_fast and result.status != "succeeded":
            self._raise_stop(HALTED)

    def run(
        self,
        batch: BatchArgs,
        flush: Callable[[Chunk], None] | None = None,
        current: Any = None,
        *,
        died: Callable[[int], BaseException | None] | None = None,
        journal: Callable[[int, tuple[Any, ...]], None] | None = None,
    ) -> Chunk:
        """Run a batch; return the chunk of the results not yet handed to ``flush``.

        ``current.value`` (shared memory, when given) is set to each record's index
        before it runs: if the process dies, the parent knows which record killed it.
        ``died`` gives the error of a record an earlier attempt of this batch died
        running (its worker died): such a record is not run again, it fails with that error.
        ``journal(position, entry)`` (when given) gets the results of each record before
        the next one starts (``position``: its offset in the batch; ``entry``: see
        ``ChunkWriter.last_kept``), but for records that ran clean with an empty bag (for
        JSON lines: that ran clean), which their count tells: with the index of the record
        running, what it got tells every result (the Dask executor keeps it on disk, for
        an attempt after a death).

        The batch ends early, before a record, once ``self.stop`` is set: the chunks
        then hold fewer results than the batch has records.
        """
        start, positions, values, lines = batch
        coordinator = self.coordinator
        worker = None
        if threading.get_ident() != self._owner:
            worker = getattr(self._local, "worker", None)
            if worker is None:
                worker = self._local.worker = coordinator.new_worker()
        run = coordinator.run
        parse = type(values) is bytes
        loads: Callable[[bytes], Any] = orjson.loads
        if parse:
            assert isinstance(values, bytes)
            # Integers past 64 bits, which orjson reads as floats: once per batch, and
            # only a batch with a wide digit run parses its lines exactly.
            if has_wide_digits(values):
                loads = loads_exact
            if worker is None and positions is None and type(lines) is range and died is None:
                data = values.split(b"\n")
                return self._run_lines(start, data, lines, flush, current, journal, loads)
            values = values.split(b"\n")
        chunk = ChunkWriter(self._steps, maps=not parse)
        add = chunk.add
        decode_error = orjson.JSONDecodeError
        stop = self.stop
        result: Result | None
        last = perf_counter()
        for k, value in enumerate(values):
            if stop.value:
                break
            index = start + (k if positions is None else positions[k])
            line = None if lines is None else lines[k]
            if died is not None:
                error = died(index)
                if error is not None:
                    result = coordinator.crashed(Record(value, line), index, error)
                    add(result)
                    self._unclean(result)
                    if journal is not None:
                        journal(k, (chunk.others[-1][1],))
                    continue
            if current is not None:
                current.value = index
            try:
                result = None
                if parse:
                    try:
                        value = loads(value)
                    except decode_error as exc:
                        invalid = InvalidLine(line, reason_for(value, exc), None, index)  # type: ignore[arg-type]
                        result = coordinator.run(invalid, index=index)
                if result is not None:
                    pass
                elif worker is None:
                    result = run(value, index=index, line=line)
                else:
                    result = coordinator.run_item(Record(value, line), index, worker)
            except BaseException as exc:  # a defect in choreo must not lose the batch
                result = coordinator.crashed(Record(value, line), index, exc)
            add(result)
            if not result.clean:
                self._unclean(result)
            if journal is not None:
                entry = chunk.last_kept()
                if entry is not None:
                    journal(k, entry)
            if flush is not None:
                now = perf_counter()
                if now - last >= FLUSH_INTERVAL:
                    flush(chunk.take())
                    last = now
        return chunk.take()

    def _run_lines(
        self,
        start: int,
        data: list[bytes],
        lines: range,
        flush: Callable[[Chunk], None] | None,
        current: Any,
        journal: Callable[[int, tuple[Any, ...]], None] | None = None,
        loads: Callable[[bytes], Any] = orjson.loads,
    ) -> Chunk:
        """``run`` for consecutive JSON lines on the runner's own thread: the common case of
        run_lines, kept tight (a clean record costs a count)."""
        coordinator = self.coordinator
        run = coordinator.run
        steps = self._steps
        skip_line = self._skip_lines.line_of
        decode_error = orjson.JSONDecodeError
        count = 0
        others: list[tuple[int, tuple[Any, ...]]] = []
        stop = self.stop
        last = perf_counter()
        for index, line, value in zip(range(start, start + len(data)), lines, data, strict=True):
            if stop.value:
                break
            if current is not None:
                current.value = index
            try:
                try:
                    value = loads(value)
                except decode_error as exc:
                    invalid = InvalidLine(line, reason_for(value, exc), None, index)
                    result = coordinator.run(invalid, index=index)
                else:
                    result = run(value, index=index, line=line)
            except BaseException as exc:  # a defect in choreo must not lose the batch
                result = coordinator.crashed(Record(value, line), index, exc)
            if not result.clean or result.duration is not None:
                if not result.clean:
                    self._unclean(result)
                # A succeeded record with skipped jobs (a re-run's common case) travels as
                # its finished line and its SkipPattern: the parent writes and counts it.
                written = None
                if result.status == "succeeded" and not result.attempts:
                    pattern = result.skip_pattern
                    written = skip_line(result, pattern)
                payload = (
                    (written, pattern) if written is not None else export_result(result, steps)
                )
                others.append((count, payload))
                if journal is not None:
                    journal(index - start, (payload,))
            count += 1
            if flush is not None:
                now = perf_counter()
                if now - last >= FLUSH_INTERVAL:
                    flush((count, None, None, others))
                    count = 0
                    others = []
                    last = now
        return (count, None, None, others)

    def close(self) -> list[str]:
        """Tear down every resource; the teardown errors, as messages."""
        from choreo_cli.errors import ResourceError

        self._run.close()
        try:
            self.coordinator.close()
        except ResourceError as exc:
            return [str(exc)]
        except Exception as exc:
            return [f"{type(exc).__name__}: {exc}"]
        return []
