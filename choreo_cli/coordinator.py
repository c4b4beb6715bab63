"""The Coordinator: runs every step of a record in order, with choreograph's semantics."""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from choreo_cli.calling import ainvoke, check_options, invoke
from choreo_cli.compiled import (
    AsyncRecordRunner,
    LineRunner,
    RecordRunner,
    SerialRunner,
    compile_async_runner,
    compile_line_runner,
    compile_runner,
)
from choreo_cli.context import Context, _Frame, _RunFlags
from choreo_cli.errors import (
    StepDefinitionError,
)
from choreo_cli.items import InvalidLine, Record
from choreo_cli.record_ends import RecordEnds
from choreo_cli.resources import ResourcePool, teardown_error
from choreo_cli.result import (
    Result,
    clean_result_type,
)
from choreo_cli.signatures import CallSpec, inspect_callable
from choreo_cli.workers import ThreadPool, Worker

if TYPE_CHECKING:
    pass

_new = object.__new__


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: an optional precheck and a job, with ``with:`` keywords for each.

    >>> def create(ctx, record): return record["id"]
    >>> Step(name="create", job=create).name
    'create'
    """

    name: str
    job: Callable[..., Any]
    precheck: Callable[..., Any] | None = None
    _: dataclasses.KW_ONLY
    job_with: Mapping[str, Any] | None = None
    precheck_with: Mapping[str, Any] | None = None
    job_name: str | None = None
    precheck_name: str | None = None
    retry: Any = None
    timeout: float | None = None
    description: str | None = None


class Planned:
    """A step checked at add_step: its callables' specs and what the runner needs."""

    __slots__ = ("frame", "job", "key", "name", "pre", "retry", "step", "timeout")

    def __init__(self, step: Step, pre: CallSpec | None, job: CallSpec) -> None:
        self.step = step
        self.name = step.name
        self.key = step.name.casefold()
        self.frame = _Frame(step.name)
        self.pre = pre
        self.job = job
        self.retry = step.retry
        self.timeout = step.timeout


class Coordinator(RecordEnds):
    """Runs steps over records: ``run(record)`` for one, ``run_many(records)`` for a stream.

    >>> coordinator = Coordinator()
    >>> coordinator.add_step(Step(name="double", job=lambda ctx, record: record * 2))
    >>> coordinator.run(21).bag.job("double")
    42
    """

    def __init__(
        self,
        workers: int = 1,
        values: Mapping[str, Any] | None = None,
        resources: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
        timings: bool = True,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.workers = workers
        # False: Result.duration is None, and a trivial record costs a third less.
        self.timings = timings
        self.values: Mapping[str, Any] = types.MappingProxyType(dict(values or {}))
        self._pool = ResourcePool(resources)
        self._plan: list[Planned] = []
        self._names: dict[str, str] = {}
        self._step_names: tuple[str, ...] = ()
        self._runner: RecordRunner | None = None
        self._serial: SerialRunner | None = None
        self._async_runner: AsyncRecordRunner | None = None
        self._line_runners: dict[bool, LineRunner] = {}
        self._by_spec: dict[int, Planned] = {}
        self._clean: type[Result] = clean_result_type((), would_run=dry_run)
        self._flags = _RunFlags()
        self._flags.dry_run = dry_run
        self._local: Worker | None = None
        self._threads: ThreadPool | None = None
        self._lock = threading.Lock()

    # -- building -------------------------------------------------------------------------

    def add_step(self, step: Step) -> None:
        """Check a step's callables and append it; raises StepDefinitionError."""
        key = step.name.casefold()
        if not step.name.strip():
            raise StepDefinitionError("a step needs a non-empty name", step=step.name)
        if key in self._names:
            raise StepDefinitionError(
                f"a step named {self._names[key]!r} already exists (names are case-insensitive)",
                step=step.name,
            )
        pre = None
        if step.precheck is not None:
            pre = inspect_callable(
                step.precheck,
                step=step.name,
                phase="precheck",
                name=step.precheck_name,
                kwargs=step.precheck_with or {},
            )
        job = inspect_callable(
            step.job, step=step.name, phase="job", name=step.job_name, kwargs=step.job_with or {}
        )
        check_options(step, job.name)
        planned = Planned(step, pre, job)
        self._plan.append(planned)
        self._by_spec = {**self._by_spec, id(job): planned}
        if pre is not None:
            self._by_spec[id(pre)] = planned
        self._names = {**self._names, key: step.name}
        self._step_names = (*self._step_names, step.name)
        self._runner = self._serial = self._async_runner = None
        self._line_runners = {}
        self._clean = clean_result_type(self._step_names, would_run=self._flags.dry_run)

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps, in order."""
        return tuple(p.step for p in self._plan)

    @property
    def interrupted(self) -> bool:
        """True once ``interrupt()`` was called."""
        return self._flags.interrupted

    @property
    def dry_run(self) -> bool:
        """True when prechecks run but no job is called."""
        return self._flags.dry_run

    def interrupt(self, reason: str = "interrupted") -> None:
        """Stop the run: no new record starts, records in flight stop before their next step."""
        self._flags.interrupt(reason)

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self, *, prebuild_workers: bool = False) -> Coordinator:
        """Build the pipeline-scoped resources now (design §3: worker-scoped ones are built
        on first use in each worker).

        With ``prebuild_workers`` every worker's worker-scoped resources are built now too,
        so that a failing factory is reported before the first record (`choreo run` does
        this). Raises ResourceError naming the resource whose factory failed, after closing
        whatever was built.
        """
        try:
            self._pool.open()
            if prebuild_workers:
                if self.workers == 1:
                    self._pool.build_worker(self._worker().resources._local)
                else:
                    self._thread_pool(prebuild=True)
        except BaseException:
            # A failed ``with`` entry gets no __exit__: close what was built; the factory's
            # error is the one to report.
            with contextlib.suppress(Exception):
                self.close()
            raise
        return self

    def _thread_pool(self, *, prebuild: bool = False) -> ThreadPool:
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPool(self, self.workers, prebuild=prebuild)
            return self._threads

    def close(self) -> None:
        """Stop the worker threads and close every resource, in reverse order of building."""
        errors: list[BaseException] = []
        threads, self._threads = self._threads, None
        if threads is not None:
            errors.extend(threads.shutdown())
        local, self._local = self._local, None
        if local is not None:
            errors.extend(local.close(self._pool))
        errors.extend(self._pool.close())
        if errors:
            raise teardown_error(errors)

    def __enter__(self) -> Coordinator:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _worker(self) -> Worker:
        worker = self._local
        if worker is None:
            worker = self._local = Worker(self._pool.view(), self.values, self._flags)
        return worker

    def new_worker(self) -> Worker:
        """A worker state for another thread (used by executors)."""
        return Worker(self._pool.view(), self.values, self._flags)

    def close_worker(self, worker: Worker) -> list[BaseException]:
        """Tear down a worker state made by ``new_worker``, from the thread that used it."""
        return worker.close(self._pool)

    # -- running ------------------------------------------------------------------------------

    def run(self, record: Any, *, index: int = 0, line: int | None = None) -> Result:
        """Run every step over one record and return its Result."""
        if type(record) in (Record, InvalidLine):
            return self.run_item(record, index, self._worker())
        return self._execute(record, index, line, None, self._worker())

    def run_many(self, records: Iterable[Any], ordered: bool = True) -> Iterator[Result]:
        """Yield exactly one Result per item of ``records``, streaming, at most ``workers`` at once.

        Items may be plain values, ``items.Record`` or ``items.InvalidLine``.
        """
        if self.workers == 1:
            return self._run_serial(records)
        return self._run_threaded(records, ordered)

    def _run_serial(self, records: Iterable[Any]) -> Iterator[Result]:
        serial = self._serial or self._compile()[1]
        results: Iterator[Result] = serial(records, self._worker())
        return results

    def _run_threaded(self, records: Iterable[Any], ordered: bool) -> Iterator[Result]:
        pool = self._thread_pool()
        flags = self._flags
        outq: queue.SimpleQueue[tuple[int, Result]] = queue.SimpleQueue()
        window = self.workers * 2
        iterator = iter(records)
        submitted = received = yielded = 0
        pending: dict[int, Result] = {}
        exhausted = False
        while True:
            while not exhausted and not flags.interrupted:
                owed = submitted - yielded if ordered else submitted - received
                if owed >= window:
                    break
                try:
                    item = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                pool.submit(submitted, item, outq)
                submitted += 1
            if received == submitted:
                return
            seq, result = outq.get()
            received += 1
            if not ordered:
                yielded += 1
                yield result
                continue
            pending[seq] = result
            while yielded in pending:
                yield pending.pop(yielded)
                yielded += 1

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
        """Run JSON Lines given as lists of lines (``JsonlReader.iter_line_lists``), one
        record at a time: the fast loop of `choreo run`, which never builds the Result of a
        record that succeeded without any error.

        Such a record's line is ``clean_line % (index, line)`` (the bytes of a clean
        result line with two ``%d``), handed to ``put``. Every other record's Result goes
        to ``emit``; a true return stops the run there. Yields, after each list, how many
        clean records it held. ``keep_raw`` sets each emitted Result's ``raw``. Needs
        ``workers == 1``. With ``tally``, a record that succeeded with skipped jobs (a
        re-run's common record) is written as its line, handed to ``put``, once a record
        of the same pattern (the same jobs skipped, by the same exception types) went to
        ``emit``: ``tally`` gets that first Result, which stands for its outcome in counts.

        >>> coordinator = Coordinator()
        >>> coordinator.add_step(Step(name="double", job=lambda ctx, record: record * 2))
        >>> out = []
        >>> list(coordinator.run_lines([[b"1", b"x"]], clean_line=b"%d:%d ", put=out.append,
        ...                           emit=lambda result: out.append(result.status)))
        [1]
        >>> out
        [b'0:1 ', 'invalid']
        """
        if self.workers != 1:
            raise ValueError("run_lines runs one record at a time: it needs workers == 1")
        runner = self._line_runners.get(keep_raw)
        if runner is None:
            runner = self._line_runners[keep_raw] = compile_line_runner(
                self, self._plan, keep_raw=keep_raw
            )
        return runner(batches, self._worker(), clean_line, put, emit, tally)

    def clean_steps(self) -> dict[str, str]:
        """The ``steps`` of a record that ran every step without an error."""
        outcome = "would_run" if self._flags.dry_run else "succeeded"
        return dict.fromkeys(self._step_names, outcome)

    def run_item(self, item: Any, index: int, worker: Worker) -> Result:
        """Run one input item (a value, Record or InvalidLine) on the given worker."""
        cls = type(item)
        if cls is Record:
            number = index if item.index is None else item.index
            return self._execute(item.value, number, item.line, item.raw, worker)
        if cls is InvalidLine:
            return self._invalid(item, index if item.index is None else item.index)
        return self._execute(item, index, None, None, worker)

    def run_item_async(self, item: Any, index: int, worker: Worker) -> Awaitable[Result]:
        """``run_item`` for a task on the worker's event loop, which awaits what this
        returns: async callables are awaited in place (the thread pool's workers run their
        records so, see workers.py)."""
        cls = type(item)
        runner = self._async_runner or self._compile_async()
        if cls is Record:
            number = index if item.index is None else item.index
            return runner(item.value, number, item.line, item.raw, worker)
        if cls is InvalidLine:
            return _resolved(self._invalid(item, index if item.index is None else item.index))
        return runner(item, index, None, None, worker)

    def has_async_steps(self) -> bool:
        """True if a step has an async precheck or job."""
        return any(
            spec is not None and spec.is_async
            for planned in self._plan
            for spec in (planned.pre, planned.job)
        )

    def _compile_async(self) -> AsyncRecordRunner:
        with self._lock:
            if self._async_runner is None:
                self._async_runner = compile_async_runner(self, self._plan)
            return self._async_runner

    def _execute(
        self, value: Any, index: int, line: int | None, raw: bytes | None, worker: Worker
    ) -> Result:
        """Run one record's steps (the compiled runner; see compiled.py)."""
        runner = self._runner or self._compile()[0]
        result: Result = runner(value, index, line, raw, worker)
        return result

    def _compile(self) -> tuple[RecordRunner, SerialRunner]:
        with self._lock:
            if self._runner is None or self._serial is None:
                self._runner, self._serial = compile_runner(self, self._plan)
            return self._runner, self._serial

    def _invoke(self, spec: CallSpec, ctx: Context, value: Any, worker: Worker) -> Any:
        """The general call path (conversion, async, timeout, retry): see calling.py."""
        return invoke(spec, ctx, value, worker, self._by_spec.get(id(spec)), self._flags)

    def _ainvoke(self, spec: CallSpec, ctx: Context, value: Any, worker: Worker) -> Awaitable[Any]:
        """The general call path of an async callable in ``run_item_async``: see calling.py."""
        return ainvoke(spec, ctx, value, worker, self._by_spec.get(id(spec)), self._flags)


async def _resolved(result: Result) -> Result:
    return result
