"""Records in batches to workers elsewhere, results back in order: what process and Dask share.

A subclass decides where a batch runs (``_submit``) and how results come back
(``_wait``, which calls ``_deliver``, ``_fail`` or ``_cancel``). This module reads the
input, cuts it into batches sized to about ``target_seconds`` of work, keeps a bounded
number of batches alive (memory is bounded whatever the input), and yields exactly one
Result per item, in input order or as completed.
"""

from __future__ import annotations

import abc
import collections
import itertools
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from choreo_cli.executors.base import PipelineSpec
from choreo_cli.executors.portable import Chunk, ResultBuilder
from choreo_cli.executors.runner import BatchArgs
from choreo_cli.items import InvalidLine, Record

if TYPE_CHECKING:
    from choreo_cli.coordinator import Step
    from choreo_cli.pipeline import Pipeline
    from choreo_cli.result import Result


class Batch:
    """Consecutive input items: the first index, the items, their Results as they arrive."""

    __slots__ = (
        "args",
        "filled",
        "items",
        "positions",
        "received",
        "results",
        "start",
        "ticket",
        "yielded",
    )

    def __init__(self, start: int, items: list[Any]) -> None:
        self.start = start
        self.items = items
        self.results: list[Result | None] = [None] * len(items)
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


class BatchSizer:
    """How many records the next batch gets, from the time workers took per record."""

    def __init__(self, *, target_seconds: float, max_size: int) -> None:
        self.size = 1
        self._target = target_seconds
        self._max = max_size
        self._per_record: float | None = None

    def observe(self, count: int, elapsed: float) -> None:
        if count <= 0:
            return
        per = max(elapsed / count, 1e-7)
        previous = self._per_record
        self._per_record = per if previous is None else 0.7 * previous + 0.3 * per
        wanted = int(self._target / self._per_record)
        self.size = max(1, min(self._max, wanted, self.size * 4))


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

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        workers: int,
        overrides: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.workers = workers
        self._local = pipeline.coordinator(workers=1, dry_run=dry_run, timings=False)
        self._builder = ResultBuilder(tuple(s.name for s in self._local.steps), dry_run=dry_run)
        self._spec = PipelineSpec.for_file(pipeline.path, overrides=overrides, dry_run=dry_run)
        self._sizer = BatchSizer(target_seconds=self.target_seconds, max_size=self.max_batch)
        self._interrupted = False
        self._ready: collections.deque[Result] = collections.deque()
        self._ordered = True
        self._unsent: collections.deque[Batch] = collections.deque()

    @property
    def steps(self) -> Sequence[Step]:
        """The pipeline's steps, in order."""
        return self._local.steps

    @property
    def interrupted(self) -> bool:
        """True once ``interrupt()`` was called."""
        return self._interrupted

    def interrupt(self, reason: str = "interrupted") -> None:
        """No new batch is sent; workers are told to stop their records before the next step.

        Only sets flags, so it is safe from a signal handler.
        """
        self._local.interrupt(reason)
        self._interrupted = True
        self._tell_workers()

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

    @abc.abstractmethod
    def _tell_workers(self) -> None:
        """Tell the workers the run was interrupted (from a signal handler: flags only)."""

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
        if self._interrupted:  # as the Coordinator: no input is read once interrupted
            return
        self._ordered = ordered
        iterator = iter(records)
        # Batches read and not yet wholly yielded, in input order: what bounds memory.
        alive: collections.deque[Batch] = collections.deque()
        unsent = self._unsent
        ready = self._ready
        limit = self.workers * self.batches_per_worker
        next_index = 0
        exhausted = False
        while True:
            while not exhausted and not self._interrupted and len(alive) < limit:
                batch, exhausted = self._read_batch(iterator, next_index)
                if batch is None:
                    break
                next_index += len(batch.items)
                alive.append(batch)
                if batch.positions:
                    unsent.append(batch)
                    # Sent as soon as read: the workers start while the next is read.
                    while unsent and self._capacity() > 0:
                        self._submit(unsent.popleft())
            if self._interrupted:
                while unsent:
                    self._cancel(unsent.popleft())
            while unsent and self._capacity() > 0:
                self._submit(unsent.popleft())
            # At most one batch's results are handed on per turn, then the loop reads
            # and sends again: the workers never wait while results are written.
            progressed = False
            if ordered:
                if alive:
                    head = alive[0]
                    results = head.results
                    count = len(results)
                    done = head.yielded
                    # The results that arrived, up to the first missing one: handed on
                    # in one run (no bookkeeping per result).
                    end = count if head.done else results.index(None, done)
                    if end > done:
                        head.yielded = end
                        progressed = True
                        yield from itertools.islice(results, done, end)  # type: ignore[misc]
                    if end == count:
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
                if exhausted or self._interrupted:
                    return
                continue
            # Poll only while there are results to hand on; else wait for some.
            self._wait(0 if progressed else 0.1)

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
        self._builder.build_chunk(
            batch.results, chunk, batch.items, batch.positions, first, batch.start
        )
        r = first + count
        if not self._ordered:
            results = batch.results
            self._ready.extend(results[pos] for pos in batch.positions[first:r])  # type: ignore[misc]
        batch.filled += count
        batch.received = r

    def _fail(self, batch: Batch, error: BaseException, count: int | None = None) -> None:
        """The next ``count`` (default: every) items of ``batch`` without a result failed."""
        positions = batch.unreported if count is None else batch.unreported[:count]
        for pos in positions:
            index = record_number(batch.items[pos], batch.start + pos)
            self._fill(batch, pos, self._local.crashed(batch.items[pos], index, error))
        batch.received += len(positions)

    def _cancel(self, batch: Batch) -> None:
        """Every item of ``batch`` still without a result is cancelled (the run was interrupted)."""
        assert self._interrupted, "only an interrupted run cancels records"
        for pos in batch.unreported:
            index = batch.start + pos
            # The local coordinator is interrupted: it returns before the first step.
            self._fill(batch, pos, self._local.run(batch.items[pos], index=index))
        batch.received = len(batch.positions)

    def _resubmit(self, batch: Batch) -> None:
        """Send the items of ``batch`` still without a result again (their worker died first)."""
        if batch.received:
            positions = batch.unreported
            items = batch.items
            values = [_value(items[pos]) for pos in positions]
            lines = [getattr(items[pos], "line", None) for pos in positions]
            batch.args = (batch.start, positions, values, lines)
        self._unsent.appendleft(batch)


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
