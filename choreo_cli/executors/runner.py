"""The worker side of the process and Dask executors: load the pipeline, run batches of records."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

import orjson

from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.executors.base import ExecutorUnavailable, PipelineSpec, file_digest
from choreo_cli.executors.portable import Chunk, ChunkWriter, export_result
from choreo_cli.jsonl.lines import SkipLines
from choreo_cli.jsonl.numbers import has_wide_digits, loads_exact
from choreo_cli.jsonl.reader import reason_for

# A batch's results go back in chunks at least this often (result lines within ~100 ms).
FLUSH_INTERVAL = 0.05

# What the parent sends for a batch: (first index, positions or None, values, lines or None).
# Positions are offsets from the first index, None when they are 0, 1, 2... For run_lines
# ``values`` is bytes: the input lines joined with newlines, parsed here.
BatchArgs = tuple[int, Sequence[int] | None, Sequence[Any], Sequence[int | None] | None]


class BatchRunner:
    """One worker's pipeline: loaded from the file, resources built, batches run through it.

    Per-record semantics are the Coordinator's: this only feeds it records and exports
    the Results. The thread that opened the runner uses the coordinator's own worker (its
    worker-scoped resources were built by ``open()``); other threads get their own.
    """

    def __init__(self, spec: PipelineSpec) -> None:
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
        pipeline = load_pipeline(spec.path, overrides=spec.overrides)
        self.coordinator = pipeline.coordinator(workers=1, dry_run=spec.dry_run, timings=False)
        # Worker-scoped resources too: a failing factory is reported before any record.
        self.coordinator.open(prebuild_workers=True)
        # Every batch of the runner is one run of the coordinator: once interrupted (by the
        # parent, or a step's KeyboardInterrupt), it cancels the rest of its batches.
        self._run = contextlib.ExitStack()
        self._run.enter_context(self.coordinator.running())
        self._steps = len(self.coordinator.steps)
        self._skip_lines = SkipLines()
        self._owner = threading.get_ident()
        self._local = threading.local()
        self._lock = threading.Lock()

    def interrupt(self, reason: str = "interrupted") -> None:
        """Records in flight stop before their next step; later ones are cancelled."""
        self.coordinator.interrupt(reason)

    def run(
        self,
        batch: BatchArgs,
        flush: Callable[[Chunk], None] | None = None,
        current: Any = None,
        *,
        died: Callable[[int], BaseException | None] | None = None,
        eager: bool = False,
    ) -> Chunk:
        """Run a batch; return the chunk of the results not yet handed to ``flush``.

        ``current.value`` (shared memory, when given) is set to each record's index
        before it runs: if the process dies, the parent knows which record killed it.
        ``died`` gives the error of a record an earlier attempt of this batch ran or died
        running (its worker died): such a record is not run again, it fails with that error.
        With ``eager``, a record of JSON lines that did not end clean is flushed at once:
        clean ones are counts, so what was flushed tells every result up to the record
        running (the Dask executor keeps it on disk, for an attempt after a death).
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
                return self._run_lines(start, data, lines, flush, current, eager, loads)
            values = values.split(b"\n")
        chunk = ChunkWriter(self._steps, maps=not parse)
        add = chunk.add
        decode_error = orjson.JSONDecodeError
        last = perf_counter()
        for k, value in enumerate(values):
            index = start + (k if positions is None else positions[k])
            line = None if lines is None else lines[k]
            if died is not None:
                error = died(index)
                if error is not None:
                    add(coordinator.crashed(Record(value, line), index, error))
                    continue
            if current is not None:
                current.value = index
            try:
                if parse:
                    try:
                        value = loads(value)
                    except decode_error as exc:
                        invalid = InvalidLine(line, reason_for(value, exc), None, index)  # type: ignore[arg-type]
                        add(coordinator.run(invalid, index=index))
                        continue
                if worker is None:
                    result = run(value, index=index, line=line)
                else:
                    result = coordinator.run_item(Record(value, line), index, worker)
            except BaseException as exc:  # a defect in choreo must not lose the batch
                result = coordinator.crashed(Record(value, line), index, exc)
            add(result)
            if flush is not None:
                now = perf_counter()
                if now - last >= FLUSH_INTERVAL or (eager and parse and chunk.others):
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
        eager: bool = False,
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
        last = perf_counter()
        for index, line, value in zip(range(start, start + len(data)), lines, data, strict=True):
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
                # A succeeded record with skipped jobs (a re-run's common case) travels as
                # its finished line and its SkipPattern: the parent writes and counts it.
                written = None
                if result.status == "succeeded" and not result.attempts:
                    pattern = result.skip_pattern
                    written = skip_line(result, pattern)
                if written is not None:
                    others.append((count, (written, pattern)))
                else:
                    others.append((count, export_result(result, steps)))
            count += 1
            if flush is not None:
                now = perf_counter()
                if now - last >= FLUSH_INTERVAL or (eager and others):
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
