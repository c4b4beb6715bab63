"""The Coordinator: runs every step of a record in order, with choreograph's semantics."""

from __future__ import annotations

import contextlib
import queue
import threading
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from choreo_cli.core.calling import check_options
from choreo_cli.core.compiled import (
    AsyncRecordRunner,
    RecordRunner,
    SerialRunner,
    compile_async_runner,
    compile_runner,
    reference_selected,
)
from choreo_cli.core.context import _RunFlags
from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.core.limits import Limit
from choreo_cli.core.plan import Plan
from choreo_cli.core.resources import ResourcePool, teardown_error
from choreo_cli.core.result import Result
from choreo_cli.core.signatures import inspect_callable
from choreo_cli.core.step import Planned, Step
from choreo_cli.core.timings import StepTimes
from choreo_cli.core.watchdog import Stuck, Watchdog
from choreo_cli.core.workers import Carrier, ThreadPool, Worker, carried_result
from choreo_cli.errors import StepDefinitionError

__all__ = ["Coordinator", "Step"]

T = TypeVar("T")


class Coordinator:
    """Runs steps over records: ``run(record)`` for one, ``run_many(records)`` for a stream.

    Examples:
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
        self._flags = _RunFlags()
        self._flags.dry_run = dry_run
        self._plan = Plan((), self._flags, timings=timings)
        # What was compiled from the plan (runners by kind); emptied by add_step.
        self._compiled: dict[Any, Any] = {}
        self._runner: RecordRunner | None = None
        self._serial: SerialRunner | None = None
        self._async_runner: AsyncRecordRunner | None = None
        self._local: Worker | None = None
        self._threads: ThreadPool | None = None
        # With a timeout in the plan (see watchdog.py): the watchdog, and the carriers that
        # run records on behalf of the threads that asked for them.
        self._watchdog: Watchdog | None = None
        self._carriers: list[Carrier] = []
        self._lock = threading.Lock()
        # The call timings of the live workers, and of those closed or abandoned; a lock
        # of their own (workers are made while self._lock is held).
        self._times_lock = threading.Lock()
        self._worker_times: list[StepTimes] = []
        self._times_gone = StepTimes()

    # -- building -------------------------------------------------------------------------

    def add_step(self, step: Step) -> None:
        """Check a step's callables and append it; raises StepDefinitionError."""
        key = step.name.casefold()
        if not step.name.strip():
            raise StepDefinitionError("a step needs a non-empty name", step=step.name)
        names = self._plan.names
        if key in names:
            raise StepDefinitionError(
                f"a step named {names[key]!r} already exists (names are case-insensitive)",
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
        steps = (*self._plan.steps, Planned(step, pre, job))
        with self._lock:
            self._plan = Plan(steps, self._flags, timings=self.timings)
            self._runner = self._serial = self._async_runner = None
            self._compiled = {}
            if self._watchdog is not None:
                self._watchdog.resolution = self._plan.resolution

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps, in order."""
        return tuple(p.step for p in self._plan.steps)

    @property
    def limits(self) -> tuple[Limit, ...]:
        """The limits its steps' callables wait for (with their wait counters), by name."""
        return self._plan.limits

    @property
    def plan(self) -> Plan:
        """The checked steps as the runners see them (a new Plan after each add_step)."""
        return self._plan

    @property
    def interrupted(self) -> bool:
        """True when the run in progress, or the last run, was interrupted (by
        ``interrupt()`` or a step's KeyboardInterrupt), or an interruption waits for the
        next run; false again once a run starts with none pending."""
        return self._flags.was_interrupted

    @property
    def dry_run(self) -> bool:
        """True when prechecks run but no job is called."""
        return self._flags.dry_run

    def interrupt(self, reason: str = "interrupted") -> None:
        """Stop the run in progress: no new record starts, records in flight stop before
        their next step. Only sets flags: safe from a signal handler.

        An interruption ends the run, not the coordinator: once the run ends, the next
        runs normally. A run is a ``run_many`` (or ``run_lines``) until its generator ends
        (exhausted, raising or closed), a ``running()`` scope, or a ``run()`` outside
        them. Called while no run is in progress, it stops the next run at its start.
        """
        self._flags.interrupt(reason)

    def running(self) -> contextlib.AbstractContextManager[None]:
        """A scope that is one run: an interruption lasts until the scope ends.

        For a loop of ``run()`` calls that an interruption must stop as a whole (a worker
        of the process and Dask executors holds one for all its batches); runs inside it
        (``run_many`` too) leave an interruption on for the scope's later ones.
        """
        return _Running(self._flags)

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self, *, prebuild_workers: bool = False) -> Coordinator:
        """Build the pipeline-scoped resources now (worker-scoped ones are built on first
        use in each worker: the README's "Pipeline files").

        With ``prebuild_workers`` every worker's worker-scoped resources are built now too,
        so that a failing factory is reported before the first record (`choreo run` does
        this). Raises ResourceError naming the resource whose factory failed, after closing
        whatever was built.
        """
        try:
            self._pool.open()
            if prebuild_workers:
                if self.workers == 1 and self._plan.has_timeout:
                    self.carrier_for(self.local_worker()).prebuild()
                elif self.workers == 1:
                    self.build_worker(self.local_worker())
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
        with self._lock:
            carriers, self._carriers = self._carriers, []
        for carrier in carriers:
            errors.extend(carrier.close())
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

    def local_worker(self) -> Worker:
        """The worker state of records run on the calling thread (``run``, one worker)."""
        worker = self._local
        if worker is None:
            worker = self._local = self._timed(Worker(self._pool.view(), self.values, self._flags))
        return worker

    def new_worker(self) -> Worker:
        """A worker state for another thread (used by executors)."""
        return self._timed(Worker(self._pool.view(), self.values, self._flags))

    def _timed(self, worker: Worker) -> Worker:
        """``worker``, whose call timings ``call_times`` reads until it is closed."""
        with self._times_lock:
            self._worker_times.append(worker.times)
        return worker

    def _retire_times(self, worker: Worker) -> None:
        """A worker is closed or abandoned: its timings join those of the workers gone."""
        with self._times_lock:
            for i, times in enumerate(self._worker_times):
                if times is worker.times:
                    del self._worker_times[i]
                    self._times_gone.merge(times)
                    break

    def call_times(self) -> StepTimes:
        """How long the calls of each step took, over every worker (core/timings.py)."""
        total = StepTimes()
        with self._times_lock:
            total.merge(self._times_gone)
            for times in self._worker_times:
                total.merge(times)
        return total

    def build_worker(self, worker: Worker) -> None:
        """Build a worker's worker-scoped resources now (else on first use)."""
        self._pool.build_worker(worker.resources._local)

    def close_worker(self, worker: Worker) -> list[BaseException]:
        """Tear down a worker state made by ``new_worker``, from the thread that used it."""
        self._retire_times(worker)
        return worker.close(self._pool)

    def detach_worker(self, worker: Worker) -> None:
        """Leave a worker's resources to its thread, abandoned by the watchdog with a call
        still running: ``close`` does not tear them down (see watchdog.py)."""
        self._retire_times(worker)
        self._pool.detach_worker(worker.resources._local)

    def timeout_watchdog(self) -> Watchdog | None:
        """The watchdog of the plan's timeouts, or None when no step has one."""
        plan = self._plan
        if not plan.has_timeout:
            return None
        watchdog = self._watchdog
        if watchdog is None:
            with self._lock:
                if self._watchdog is None:
                    self._watchdog = Watchdog(plan.resolution)
                watchdog = self._watchdog
        return watchdog

    def carrier_for(self, worker: Worker) -> Carrier:
        """The thread that runs ``worker``'s records when the plan has a timeout: the
        thread that asked must not be the one stuck in a call (see watchdog.py)."""
        carrier = worker.carrier
        if carrier is None:
            watchdog = self.timeout_watchdog() or Watchdog()
            with self._lock:
                carrier = worker.carrier
                if carrier is None:
                    carrier = worker.carrier = Carrier(self, watchdog)
                    self._carriers.append(carrier)
        return carrier

    def finish_stuck(self, stuck: Stuck, raw: bytes | None, worker: Worker) -> Result:
        """The rest of a record whose timed call the watchdog gave up on, on a fresh worker:
        StepTimeout, or the next attempt of a retried job (``interpreted.finish_stuck``)."""
        from choreo_cli.core import interpreted

        return interpreted.finish_stuck(self._plan, worker, stuck, raw)

    def crashed(self, item: Any, index: int, exc: BaseException) -> Result:
        """A failed Result for an item whose run raised inside choreo itself."""
        return self._plan.outcomes.crashed(item, index, exc)

    def compiled(self, key: Any, build: Callable[[Plan], T]) -> T:
        """What ``build(plan)`` made for ``key`` (a runner), built once per plan.

        How runners outside the core (the fused JSON Lines loop of `choreo run`, see
        ``choreo_cli.jsonl.line_runner``) keep what they compiled with the coordinator.
        """
        with self._lock:
            if key not in self._compiled:
                self._compiled[key] = build(self._plan)
            built: T = self._compiled[key]
            return built

    # -- running ------------------------------------------------------------------------------

    def run(self, record: Any, *, index: int = 0, line: int | None = None) -> Result:
        """Run every step over one record and return its Result.

        Outside any other run (``run_many``, ``running()``) this is a run of its own: an
        interruption during it ends with it.
        """
        flags = self._flags
        if flags.was_interrupted:
            flags.begin_alone()
        if type(record) in (Record, InvalidLine):
            result = self.run_item(record, index, self.local_worker())
        else:
            result = self._execute(record, index, line, None, self.local_worker())
        if flags.interrupted:
            flags.end_alone()
        return result

    def run_many(self, records: Iterable[Any], ordered: bool = True) -> Iterator[Result]:
        """Yield exactly one Result per item of ``records``, streaming, at most ``workers`` at once.

        Items may be plain values, ``items.Record`` or ``items.InvalidLine``. If iterating
        ``records`` raises, no more is read: the Results of the items already read come
        first, then the exception propagates. The iteration is one run (see ``interrupt``).
        """
        if self.workers == 1:
            return self._run_serial(records)
        return self._run_threaded(records, ordered)

    def _run_serial(self, records: Iterable[Any]) -> Iterator[Result]:
        serial = self._serial or self._compile()[1]
        results: Iterator[Result] = serial(records, self.local_worker())
        return results

    def _run_threaded(self, records: Iterable[Any], ordered: bool) -> Iterator[Result]:
        pool = self._thread_pool()
        flags = self._flags
        watchdog = self.timeout_watchdog()  # the pool watches its threads with a timeout
        outq: queue.SimpleQueue[tuple[int, Result]] = queue.SimpleQueue()
        window = self.workers * 2
        iterator = iter(records)
        submitted = received = yielded = 0
        pending: dict[int, Result] = {}
        exhausted = False
        broken: BaseException | None = None  # what iterating the input raised
        flags.begin()
        try:
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
                    except BaseException as exc:
                        # The records read run on: their Results first, then the error.
                        broken = exc
                        exhausted = True
                        break
                    pool.submit(submitted, item, outq, watchdog)
                    submitted += 1
                if received == submitted:
                    if broken is not None:
                        raise broken
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
        except GeneratorExit:
            # Closed early, interrupted: the records in flight must still see the
            # interruption before their next step, so the run ends once they have come
            # back (after the steps running now; they start no other).
            if flags.interrupted:
                for _ in range(submitted - received):
                    outq.get()
            raise
        finally:
            broken = None  # no cycle through the traceback's frames
            flags.end()

    def clean_steps(self) -> dict[str, str]:
        """The ``steps`` of a record that ran every step without an error."""
        outcome = "would_run" if self._flags.dry_run else "succeeded"
        return dict.fromkeys(self._plan.step_names, outcome)

    def run_item(self, item: Any, index: int, worker: Worker) -> Result:
        """Run one input item (a value, Record or InvalidLine) on the given worker."""
        cls = type(item)
        if cls is Record:
            number = index if item.index is None else item.index
            return self._execute(item.value, number, item.line, item.raw, worker)
        if cls is InvalidLine:
            return self._plan.outcomes.invalid(item, index if item.index is None else item.index)
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
            invalid = self._plan.outcomes.invalid(item, index if item.index is None else item.index)
            return _resolved(invalid)
        return runner(item, index, None, None, worker)

    def has_async_steps(self) -> bool:
        """True if a step has an async precheck or job."""
        return self._plan.has_async

    def _compile_async(self) -> AsyncRecordRunner:
        with self._lock:
            if self._async_runner is None:
                self._async_runner = _runners(self._plan).compile_async(self._plan)
            return self._async_runner

    def _execute(
        self, value: Any, index: int, line: int | None, raw: bytes | None, worker: Worker
    ) -> Result:
        """Run one record's steps (the compiled runner, see compiled.py)."""
        runner = self._runner or self._compile()[0]
        result: Result = runner(value, index, line, raw, worker)
        return result

    def _compile(self) -> tuple[RecordRunner, SerialRunner]:
        with self._lock:
            if self._runner is None or self._serial is None:
                plan = self._plan
                runner, serial = _runners(plan).compile(plan)
                if plan.has_timeout:
                    runner, serial = self._carried(plan, runner, serial)
                self._runner, self._serial = runner, serial
            return self._runner, self._serial

    def _carried(
        self, plan: Plan, run: RecordRunner, run_serial: SerialRunner
    ) -> tuple[RecordRunner, SerialRunner]:
        """``run`` and ``run_serial`` for a plan with a timeout: a worker whose thread the
        watchdog can abandon (the pool's, a carrier's) runs records itself; any other
        hands each record to its carrier and waits (see watchdog.py)."""
        flags = plan.flags
        invalid = plan.outcomes.invalid
        carrier_for = self.carrier_for
        finish_stuck = self.finish_stuck

        def carried(
            value: Any, index: int, line: int | None, raw: bytes | None, worker: Worker
        ) -> Result:
            if worker.watched:
                result: Result = run(value, index, line, raw, worker)
                return result

            def record(carrier_worker: Worker) -> Result:
                result: Result = run(value, index, line, raw, carrier_worker)
                return result

            def finish(stuck: Stuck, carrier_worker: Worker) -> Result:
                return finish_stuck(stuck, raw, carrier_worker)

            return carried_result(carrier_for(worker), record, finish)

        def carried_serial(records: Iterable[Any], worker: Worker) -> Iterator[Result]:
            if worker.watched:
                results: Iterator[Result] = run_serial(records, worker)
                return results
            return serial(records, worker)

        def serial(records: Iterable[Any], worker: Worker) -> Iterator[Result]:
            # run_serial's loop, each record handed to the carrier.
            flags.begin()
            try:
                if flags.interrupted:
                    return
                for index, item in enumerate(records):
                    cls = type(item)
                    if cls is InvalidLine:
                        yield invalid(item, index if item.index is None else item.index)
                    elif cls is Record:
                        number = index if item.index is None else item.index
                        yield carried(item.value, number, item.line, item.raw, worker)
                    else:
                        yield carried(item, index, None, None, worker)
                    if flags.interrupted:
                        return
            finally:
                flags.end()

        return carried, carried_serial


async def _resolved(result: Result) -> Result:
    return result


class _Running:
    """``Coordinator.running()``: one run, from entry to exit."""

    __slots__ = ("_flags",)

    def __init__(self, flags: _RunFlags) -> None:
        self._flags = flags

    def __enter__(self) -> None:
        self._flags.begin()

    def __exit__(self, *exc_info: object) -> None:
        self._flags.end()


class _Runners:
    """How a plan's records are run: compiled (the default) or interpreted (the reference)."""

    def __init__(
        self,
        compile: Callable[[Plan], tuple[RecordRunner, SerialRunner]],
        compile_async: Callable[[Plan], AsyncRecordRunner],
    ) -> None:
        self.compile = compile
        self.compile_async = compile_async


def _runners(plan: Plan) -> _Runners:
    """``CHOREO_RUNNER=interpreted`` runs records with the plain loop of interpreted.py,
    the reference the compiled runners are tested against (slower; for debugging)."""
    if reference_selected():
        from choreo_cli.core import interpreted

        return _Runners(interpreted.build_runner, interpreted.build_async_runner)
    return _Runners(compile_runner, compile_async_runner)
