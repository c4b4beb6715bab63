"""Records in batches to workers elsewhere, results back in order: what process and Dask share.

A subclass decides where a batch runs (``_submit``) and how results come back
(``_wait``, which calls ``_deliver``, ``_fail`` or ``_cancel``). This module reads the
input, cuts it into batches sized to about ``target_seconds`` of work, keeps a bounded
number of batches alive (memory is bounded whatever the input), and yields exactly one
Result per item, in input order or as completed.
"""

from __future__ import annotations

import abc
import bisect
import collections
import itertools
import operator
import pickle
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

import orjson

from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.executors.base import HALTED, INTERRUPTED, RUNNING, PipelineSpec
from choreo_cli.executors.portable import Chunk, ResultBuilder
from choreo_cli.executors.runner import BatchArgs
from choreo_cli.jsonl.numbers import loads_exact
from choreo_cli.jsonl.reader import invalid_line

if TYPE_CHECKING:
    from choreo_cli.core.coordinator import Step
    from choreo_cli.core.result import Result
    from choreo_cli.core.timings import StepTimes
    from choreo_cli.pipeline.definitions import Pipeline


class Batch:
    """Consecutive input items: the first index, the items, their Results as they arrive."""

    __slots__ = (
        "args",
        "clean",
        "filled",
        "items",
        "lines",
        "positions",
        "received",
        "results",
        "start",
        "ticket",
        "yielded",
    )

    def __init__(self, start: int, items: Sequence[Any]) -> None:
        self.start = start
        self.items = items
        self.lines: LineItems | None = None  # run_lines: the input lines, else None
        self.clean = 0  # run_lines: how many of its records came back clean
        self.results: list[Any] = [None] * len(items)
        self.filled = 0
        self.positions: Sequence[int] = []  # offsets of the items sent to a worker
        self.received = 0  # how many of those came back
        self.yielded = 0
        self.args: BatchArgs | None = None
        self.ticket: Any = None  # the subclass's handle (a worker, a future)

    @property
    def done(self) -> bool:
        return self.filled == len(self.items)

    @property
    def unreported(self) -> Sequence[int]:
        """Offsets of sent items whose result has not come back."""
        return self.positions[self.received :]

    def take_arrived(self) -> tuple[int, int]:
        """The offsets ``(first, end)`` of the results that arrived since the last call, up
        to the first missing one (handed on in one run: no bookkeeping per result)."""
        first = self.yielded
        end = len(self.results) if self.done else self.results.index(None, first)
        self.yielded = end
        return first, end


class LineItems(Sequence[Any]):
    """The input lines of a run_lines batch, read as items (Record or InvalidLine) on demand.

    Only the rare paths read an item (a record that failed, was cancelled or whose
    worker died): a clean record's line is written from its index and line number.
    """

    __slots__ = ("data", "keep_raw", "numbers", "start")

    def __init__(
        self, data: list[bytes], numbers: Sequence[int], start: int, keep_raw: bool
    ) -> None:
        self.data = data
        self.numbers = numbers
        self.start = start
        self.keep_raw = keep_raw

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, pos: Any) -> Any:
        if not isinstance(pos, int):
            raise TypeError("LineItems reads one item at a time")
        data = self.data[pos]
        line = self.numbers[pos]
        try:
            value = loads_exact(data)  # as the worker read it: integers past 64 bits too
        except orjson.JSONDecodeError as exc:
            # A line over the reader's limit too (a LongLine): made from the reader's item.
            return invalid_line(line, data, exc, self.keep_raw, self.start + pos)
        return Record(value, line, data + b"\n" if self.keep_raw else None, self.start + pos)


# What a run_lines batch holds for a record that came back clean.
CLEAN: Any = object()


class Written:
    """What a run_lines batch holds for a record whose line the worker wrote: a succeeded
    record with skipped jobs. ``stand_in`` is the Result of its SkipPattern, which stands
    for its outcome (no index) in counts."""

    __slots__ = ("line", "stand_in")

    def __init__(self, line: bytes, stand_in: Result) -> None:
        self.line = line
        self.stand_in = stand_in


class BatchSizer:
    """How many records the next batch gets, from the time workers took per record.

    The time per record is a moving average weighted by records: a batch of 500 counts
    for more than the first one-record batch (which pays the cold start); batches of one
    size weigh 0.3 each, as in a plain moving average. A batch is at most ``growth``
    times the last size.
    """

    def __init__(self, *, target_seconds: float, max_size: int, growth: int = 4) -> None:
        self.size = 1
        self._target = target_seconds
        self._max = max_size
        self._growth = growth
        self._per_record: float | None = None
        self._records = 0.0  # the (decayed) count of records behind the average

    @property
    def measured(self) -> bool:
        """True once a batch came back: until then batches are of one record."""
        return self._per_record is not None

    def observe(self, count: int, elapsed: float) -> None:
        if count <= 0:
            return
        per = max(elapsed / count, 1e-7)
        previous = self._per_record
        self._records = 0.7 * self._records + count
        if previous is None:
            self._per_record = per
        else:
            self._per_record = previous + (per - previous) * count / self._records
        wanted = int(self._target / self._per_record)
        self.size = max(1, min(self._max, wanted, self.size * self._growth))


class BatchExecutor(abc.ABC):
    """Base of the executors that run batches of records in other processes.

    The pipeline is loaded here too, but never opened: its steps name the summary's
    rows, and it gives the Results of items that never reach a worker (invalid lines,
    records read but not sent when the run was interrupted, records of a dead worker).

    At most ``workers * batches_per_worker * max_batch`` records are held at once.
    """

    # A batch is sized to about this much work: large enough that sending it costs
    # little, small enough that workers share the load and results flow steadily.
    target_seconds = 0.05
    max_batch = 512
    # Batches alive (read, not yet all yielded) per worker.
    batches_per_worker = 4
    # A batch is at most this many times the last one's size (while the sizes ramp up).
    growth = 4
    # run_lines: a batch holds at most this many bytes of lines (at least one line), or
    # None for no limit but ``max_batch``.
    max_batch_bytes: int | None = None

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        workers: int,
        overrides: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        fail_fast: bool = False,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.workers = workers
        self._local = pipeline.coordinator(workers=1, dry_run=dry_run, timings=False)
        # The executor's life is one run of the local coordinator: once interrupted, it
        # stays so (``_cancel`` relies on it to give records their cancelled Results).
        self._local.running().__enter__()
        self._builder = ResultBuilder(tuple(s.name for s in self._local.steps), dry_run=dry_run)
        self._spec = PipelineSpec.for_file(
            pipeline.path,
            overrides=overrides,
            dry_run=dry_run,
            fail_fast=fail_fast,
            limit_rates=pipeline.rate_overrides,
            limit_workers=workers,
            precheck_errors=pipeline.precheck_errors,
        )
        # Each worker's share of each limit; the waits its workers reported at teardown.
        self._limit_shares = [limit.build(workers) for limit in pipeline.limits]
        self._limit_waits: dict[str, list[float]] = {}
        # The call times the workers reported at teardown (core/timings.py).
        from choreo_cli.core.timings import StepTimes

        self._times = StepTimes()
        self._fail_fast = fail_fast
        self._sizer = BatchSizer(
            target_seconds=self.target_seconds, max_size=self.max_batch, growth=self.growth
        )
        self._interrupted = False
        # RUNNING, HALTED or INTERRUPTED (base.py): once set, no batch is sent and no input
        # is read; it only rises.
        self._level = RUNNING
        self._ready: collections.deque[Result] = collections.deque()
        self._ordered = True
        self._unsent: collections.deque[Batch] = collections.deque()

    @property
    def steps(self) -> Sequence[Step]:
        """The pipeline's steps, in order."""
        return self._local.steps

    @property
    def interrupted(self) -> bool:
        """True once ``interrupt()`` was called, or a step raised KeyboardInterrupt in a
        worker (not after ``halt()``)."""
        return self._interrupted

    def clean_steps(self) -> dict[str, str]:
        """The ``steps`` of a record that ran every step without an error (for run_lines)."""
        return self._local.clean_steps()

    def limit_figures(self) -> dict[str, dict[str, Any]]:
        """Per limit: each worker's share, and the waits the workers reported when they
        closed (summed)."""
        from choreo_cli.core.limits import limit_figures

        figures = limit_figures(self._limit_shares)
        for name, (waits, seconds) in self._limit_waits.items():
            if name in figures:
                figures[name]["waits"] = int(waits)
                figures[name]["wait_seconds"] = round(seconds, 6)
        return figures

    def call_times(self) -> StepTimes:
        """How long each step's calls took: what the workers reported when they closed,
        and the calls run here (a record finished after its worker was lost)."""
        from choreo_cli.core.timings import StepTimes

        times = StepTimes()
        times.merge(self._times)
        times.merge(self._local.call_times())
        return times

    def _count_times(self, times: StepTimes) -> None:
        """Add what one worker reported of its call times."""
        self._times.merge(times)

    def _count_waits(self, figures: dict[str, dict[str, Any]]) -> None:
        """Add what one worker reported of its waits per limit."""
        for name, figure in figures.items():
            total = self._limit_waits.setdefault(name, [0, 0.0])
            total[0] += figure["waits"]
            total[1] += figure["wait_seconds"]

    def interrupt(self, reason: str = "interrupted") -> None:
        """No new batch is sent; workers start no new record and stop their records in
        flight before the next step.

        Only sets flags, so it is safe from a signal handler.
        """
        # The local coordinator gives the records that never start their cancelled Results.
        self._local.interrupt(reason)
        self._interrupted = True
        self._level = INTERRUPTED
        self._tell_workers()

    def halt(self, reason: str) -> None:
        """No new batch is sent; workers start no new record (they check before each one,
        in the middle of a batch too); records in flight finish. Records read but not
        started get a cancelled Result. Not an interruption (``interrupted`` stays False).

        Only sets flags, so it is safe from a signal handler.
        """
        if self._level:
            return
        self._local.interrupt(reason)
        self._level = HALTED
        self._tell_workers()

    def _adopt(self, level: int) -> None:
        """A worker raised the stop flag: a step's KeyboardInterrupt (INTERRUPTED, the
        run is interrupted as by Ctrl-C) or, with fail-fast, a record that did not succeed."""
        if level >= INTERRUPTED and not self._interrupted:
            self.interrupt("a step raised KeyboardInterrupt")
        elif level == HALTED:
            self.halt("a record did not succeed (--fail-fast)")

    @abc.abstractmethod
    def kill_workers(self) -> None:
        """End the worker processes this run started, at once (SIGKILL): for a second
        signal, after which choreo exits without waiting for anything. Their records in
        flight are lost with them. Safe from a signal handler."""

    def __enter__(self) -> BatchExecutor:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abc.abstractmethod
    def open(self, *, prebuild_workers: bool = True) -> BatchExecutor:
        """Start the workers; each loads the pipeline and builds its resources."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the workers; raise ResourceError when a worker's teardown failed."""

    def _send_unsent(self) -> None:
        """Send the batches read but not sent while workers have room; once the run is
        interrupted or halted, cancel them instead (their records get their cancelled results)."""
        unsent = self._unsent
        if self._level:
            while unsent:
                self._cancel(unsent.popleft())
        while unsent and self._capacity() > 0:
            self._submit(unsent.popleft())

    @abc.abstractmethod
    def _tell_workers(self) -> None:
        """Tell the workers the stop level (``self._level``) rose (from a signal handler:
        flags only)."""

    @abc.abstractmethod
    def _capacity(self) -> int:
        """How many more batches can be submitted now."""

    @abc.abstractmethod
    def _submit(self, batch: Batch) -> None:
        """Send ``batch.args`` to a worker; set ``batch.ticket``."""

    @abc.abstractmethod
    def _in_flight(self) -> int:
        """How many submitted batches have not come back whole."""

    @abc.abstractmethod
    def _wait(self, timeout: float) -> None:
        """Wait for results (or a failure) and hand them to _deliver/_fail/_cancel/_resubmit."""

    # -- the stream ---------------------------------------------------------------------

    def run_many(self, records: Iterable[Any], ordered: bool = True) -> Iterator[Result]:
        """Yield exactly one Result per item of ``records``; see ``Coordinator.run_many``."""
        if self._level:  # as the Coordinator: no input is read once interrupted
            return
        self._ordered = ordered
        iterator = iter(records)
        # Batches read and not yet wholly yielded, in input order: what bounds memory.
        alive: collections.deque[Batch] = collections.deque()
        unsent = self._unsent
        ready = self._ready
        sizer = self._sizer
        next_index = 0
        exhausted = False
        while True:
            # Until a batch came back, one single-record batch per worker (no more: their
            # round trips would delay the batches sized from what came back).
            limit = self.workers * (self.batches_per_worker if sizer.measured else 1)
            while not exhausted and not self._level and len(alive) < limit:
                batch, exhausted = self._read_batch(iterator, next_index)
                if batch is None:
                    break
                next_index += len(batch.items)
                alive.append(batch)
                if batch.positions:
                    unsent.append(batch)
                    # Sent as soon as read: the workers start while the next is read.
                    self._send_unsent()
            self._send_unsent()
            # At most one batch's results are handed on per turn, then the loop reads
            # and sends again: the workers never wait while results are written.
            progressed = False
            if ordered:
                if alive:
                    head = alive[0]
                    done, end = head.take_arrived()
                    if end > done:
                        progressed = True
                        yield from itertools.islice(head.results, done, end)
                    if end == len(head.items):
                        alive.popleft()
                        progressed = True
            else:
                if ready:
                    progressed = True
                    for _ in range(len(ready)):
                        yield ready.popleft()
                if any(batch.done for batch in alive):
                    alive = collections.deque(batch for batch in alive if not batch.done)
            if not alive:
                if exhausted or self._level:
                    return
                continue
            # Poll only while there are results to hand on; else wait for some.
            self._wait(0 if progressed else 0.1)

    def run_lines(
        self,
        batches: Iterable[list[bytes]],
        *,
        clean_line: bytes,
        put: Callable[[bytes], Any],
        emit: Callable[[Result], Any],
        keep_raw: bool = False,
        tally: Callable[[Result], Any] | None = None,
    ) -> Iterator[int]:
        """Run JSON Lines given as lists of lines; see ``Coordinator.run_lines``.

        The workers parse the lines. A record that ran every step without an error comes
        back as a count: its line is ``clean_line % (index, line)``, handed to ``put``.
        A record that succeeded with skipped jobs comes back as its line, handed to
        ``put``; ``tally`` gets a Result standing for its outcome (for the summary).
        Every other record's Result goes to ``emit``; a true return stops the reading
        (the records already read still get their lines). Lines come out in input order.
        Yields, after each batch, how many clean records it held.
        """
        if self._level:
            return
        self._ordered = True
        source = iter(batches)
        alive: collections.deque[Batch] = collections.deque()
        unsent = self._unsent
        sizer = self._sizer
        pending: list[bytes] = []
        number = 0  # the line number of the last line taken from ``pending``
        next_index = 0
        exhausted = stopped = False
        while True:
            limit = self.workers * (self.batches_per_worker if sizer.measured else 1)
            while not stopped and not self._level and len(alive) < limit:
                size = sizer.size
                while not exhausted and len(pending) < size:
                    try:
                        pending.extend(next(source))
                    except StopIteration:
                        exhausted = True
                if not pending:
                    break
                lines = pending[:size]
                if self.max_batch_bytes is not None and len(lines) > 1:
                    lines = _within(lines, self.max_batch_bytes)
                del pending[: len(lines)]
                batch = _line_batch(lines, number + 1, next_index, keep_raw)
                number += len(lines)
                if batch is None:  # every line was blank
                    continue
                next_index += len(batch.items)
                alive.append(batch)
                unsent.append(batch)
                self._send_unsent()
            self._send_unsent()
            progressed = False
            if alive:
                head = alive[0]
                done, end = head.take_arrived()
                if end > done:
                    progressed = True
                    numbers = head.lines.numbers  # type: ignore[union-attr]
                    first = head.start
                    indices = range(first + done, first + end)
                    if head.clean == head.filled:  # every one clean: no loop in Python
                        pairs = zip(indices, numbers[done:end], strict=True)
                        _consume(map(put, map(clean_line.__mod__, pairs)))
                        clean = end - done
                    else:
                        clean = 0
                        for index, line, result in zip(
                            indices,
                            numbers[done:end],
                            itertools.islice(head.results, done, end),
                            strict=True,
                        ):
                            if result is CLEAN:
                                put(clean_line % (index, line))
                                clean += 1
                            elif type(result) is Written:
                                put(result.line)
                                if tally is not None:
                                    tally(result.stand_in)
                            elif emit(result):
                                stopped = True
                    yield clean
                if end == len(head.items):
                    alive.popleft()
                    progressed = True
            if not alive:
                if (exhausted and not pending) or stopped or self._level:
                    return
                continue
            self._wait(0 if progressed else 0.1)

    def _line_result(
        self, lines: LineItems, pos: int, index: int, payload: tuple[Any, ...]
    ) -> Result:
        """The Result of a run_lines record that did not come back clean."""
        item = lines[pos]
        if type(item) is InvalidLine:
            # Made here, as for an invalid line of run_many (the worker said no more).
            return self._local.run(item, index=index)
        assert type(item) is Record
        return self._builder.build(payload, index, item.line, item.value, item.raw)

    def _read_batch(self, iterator: Iterator[Any], start: int) -> tuple[Batch | None, bool]:
        """The next batch of items (None when there was none), and whether the input ended."""
        size = self._sizer.size
        items = list(itertools.islice(iterator, size))
        exhausted = len(items) < size
        if not items:
            return None, exhausted
        batch = Batch(start, items)
        if set(map(type, items)) == _RECORDS:  # the common case, kept fast (no loop in Python)
            batch.positions = range(len(items))
            numbers = list(map(_index_of, items))
            sent = list(map(_value_of, items))
            sent_lines = list(map(_line_of, items))
            if numbers == list(range(start, start + len(items))):
                batch.args = (start, None, sent, sent_lines)
            else:
                # Numbers the reader did not give, or not from ``start`` on (a run resumed
                # from a checkpoint skipped some): the worker numbers record k as
                # 0 + positions[k], so send each record's own number as its position.
                numbers = [record_number(item, start + pos) for pos, item in enumerate(items)]
                batch.args = (0, numbers, sent, sent_lines)
            return batch, exhausted
        values: list[Any] = []
        lines: list[int | None] = []
        positions: list[int] = []
        batch.positions = positions
        invalid = False
        for pos, item in enumerate(items):
            cls = type(item)
            if cls is Record:
                values.append(item.value)
                lines.append(item.line)
                positions.append(pos)
            elif cls is InvalidLine:
                # Nothing to run: the result is made here, as the Coordinator makes it.
                self._fill(batch, pos, self._local.run(item, index=start + pos))
                invalid = True
            else:
                values.append(item)
                lines.append(None)
                positions.append(pos)
        batch.args = (start, positions if invalid else None, values, lines)
        _keep_record_numbers(batch)
        return batch, exhausted

    def _fill(self, batch: Batch, pos: int, result: Result) -> None:
        batch.results[pos] = result
        batch.filled += 1
        if not self._ordered:
            self._ready.append(result)

    def _deliver(self, batch: Batch, chunk: Chunk, elapsed: float) -> None:
        """Results of the next ``chunk[0]`` items sent in ``batch``."""
        count = chunk[0]
        self._sizer.observe(count, elapsed)
        first = batch.received
        lines = batch.lines
        if lines is not None:
            # run_lines: a clean record is a mark (its line is made from two numbers).
            positions = batch.positions
            results = batch.results
            if type(positions) is range and positions.step == 1 and not positions.start:
                results[first : first + count] = repeat(CLEAN, count)
            else:
                for pos in positions[first : first + count]:
                    results[pos] = CLEAN
            others = chunk[3]
            for k, payload in others:
                pos = positions[first + k]
                if len(payload) == 2:  # a line the worker wrote, and its SkipPattern
                    results[pos] = Written(payload[0], self._builder.skipped(payload[1]))
                else:
                    results[pos] = self._line_result(lines, pos, batch.start + pos, payload)
            batch.clean += count - len(others)
            batch.filled += count
            batch.received = first + count
            return
        self._builder.build_chunk(
            batch.results, chunk, batch.items, batch.positions, first, batch.start
        )
        r = first + count
        if not self._ordered:
            results = batch.results
            self._ready.extend(results[pos] for pos in batch.positions[first:r])
        batch.filled += count
        batch.received = r

    def _fail(self, batch: Batch, error: BaseException, count: int | None = None) -> None:
        """The next ``count`` (default: every) items of ``batch`` without a result failed."""
        positions = batch.unreported if count is None else batch.unreported[:count]
        for pos in positions:
            index = record_number(batch.items[pos], batch.start + pos)
            self._fill(batch, pos, self._local.crashed(batch.items[pos], index, error))
        batch.received += len(positions)
        if positions and self._fail_fast:
            self.halt("a record failed (--fail-fast)")

    def _ended_early(self, batch: Batch, level: int) -> None:
        """A worker ended ``batch`` before its last record (its stop flag, at ``level``,
        was set): the records it did not run are cancelled."""
        self._adopt(max(level, HALTED))
        self._cancel(batch)

    def _cancel(self, batch: Batch) -> None:
        """Every item of ``batch`` still without a result is cancelled (the run was
        interrupted or halted)."""
        assert self._level, "only an interrupted or halted run cancels records"
        for pos in batch.unreported:
            index = batch.start + pos
            # The local coordinator is interrupted: it returns before the first step.
            self._fill(batch, pos, self._local.run(batch.items[pos], index=index))
        batch.received = len(batch.positions)

    def _resubmit(self, batch: Batch) -> None:
        """Send the items of ``batch`` still without a result again (their worker died first)."""
        if batch.received and batch.lines is not None:
            unreported = list(batch.unreported)
            source = batch.lines
            data = b"\n".join([source.data[pos] for pos in unreported])
            line_numbers = [source.numbers[pos] for pos in unreported]
            batch.args = (batch.start, unreported, data, line_numbers)
        elif batch.received:
            positions = batch.unreported
            items = batch.items
            values = [_value(items[pos]) for pos in positions]
            lines = [getattr(items[pos], "line", None) for pos in positions]
            # Each record's own number (a resumed run's are not start + position).
            numbers = [record_number(items[pos], batch.start + pos) for pos in positions]
            batch.args = (0, numbers, values, lines)
        self._unsent.appendleft(batch)


def _line_batch(lines: list[bytes], first_line: int, start: int, keep_raw: bool) -> Batch | None:
    """The batch of the records of ``lines`` (blank ones skipped), or None if all are blank."""
    data = b"\n".join(lines)
    numbers: Sequence[int]
    # A blank line (empty, or only what ``bytes.strip()`` removes) is skipped, as
    # JsonlReader skips it. ``isspace`` stops at a line's first other byte: a scan of
    # the lines costs far less than a multi-line regex over the data.
    if all(lines) and not any(map(bytes.isspace, lines)):  # the common case: none
        kept = lines
        numbers = range(first_line, first_line + len(lines))
    else:
        kept = []
        numbers = []
        for number, line in enumerate(lines, first_line):
            if line.strip():
                kept.append(line)
                numbers.append(number)
        if not kept:
            return None
        data = b"\n".join(kept)
    items = LineItems(kept, numbers, start, keep_raw)
    batch = Batch(start, items)
    batch.lines = items
    batch.positions = range(len(kept))
    # The worker splits ``data`` at each newline (no line holds one) and parses the lines.
    batch.args = (start, None, data, numbers)
    return batch


def _within(lines: list[bytes], limit: int) -> list[bytes]:
    """The first of ``lines`` that hold at most ``limit`` bytes (always at least one)."""
    total = sum(map(len, lines))
    if total <= limit:
        return lines
    cut = bisect.bisect_right(list(itertools.accumulate(map(len, lines))), limit)
    return lines[: max(1, cut)]


# Room pickle gets, past the interpreter's recursion limit, for a record nested deeply:
# a JSON line goes up to 1024 levels (orjson's limit), and pickle takes a level of
# recursion for each, with the frames of its caller on top.
DEEP_PICKLE = 2048


def pickled(message: Any, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    """``message`` (a batch for a worker) pickled. A record nested deeper than pickle goes
    within the recursion limit (``[[[...]]]`` 900 levels down, which a JSON line may
    hold) gets a second try with ``DEEP_PICKLE`` more; unpickling takes no recursion.
    Raises RecursionError for a value deeper still (no JSON line is: a library caller's).
    """
    try:
        return pickle.dumps(message, protocol=protocol)
    except RecursionError:
        pass
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + DEEP_PICKLE)
    try:
        return pickle.dumps(message, protocol=protocol)
    finally:
        sys.setrecursionlimit(limit)


# Runs an iterator to its end, keeping nothing.
_consume = collections.deque[Any](maxlen=0).extend
_RECORDS = frozenset((Record,))
_index_of = operator.attrgetter("index")
_value_of = operator.attrgetter("value")
_line_of = operator.attrgetter("line")


def _value(item: Any) -> Any:
    return item.value if type(item) is Record else item


def record_number(item: Any, default: int) -> int:
    """The record's own number (kept from the reader, so a resumed run keeps the numbers of
    the first), else its position in this run."""
    number = getattr(item, "index", None) if type(item) in (Record, InvalidLine) else None
    return default if number is None else int(number)


def _keep_record_numbers(batch: Batch) -> None:
    """When the items carry numbers other than their positions (a run resumed from a
    checkpoint skipped some), send each record's number instead of the batch start."""
    assert batch.args is not None
    start, _, values, lines = batch.args
    sent = batch.positions
    numbers = [record_number(batch.items[pos], start + pos) for pos in sent]
    if any(number != start + pos for number, pos in zip(numbers, sent, strict=True)):
        # The worker numbers record k as start + positions[k]: start 0, the numbers.
        batch.args = (0, numbers, values, lines)
