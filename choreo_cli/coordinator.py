"""The Coordinator: runs every step of a record in order, with choreograph's semantics."""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

from choreo_cli.compiled import RecordRunner, SerialRunner, compile_runner
from choreo_cli.context import Context, DataBag, _Frame, _RunFlags
from choreo_cli.errors import (
    Cancel,
    Interrupted,
    Skip,
    StepDefinitionError,
    StepTimeout,
    UnassignableInput,
)
from choreo_cli.items import InvalidLine, Record
from choreo_cli.resources import ResourcePool, Resources
from choreo_cli.result import (
    CANCELLED,
    FAILED,
    INVALID,
    SUCCEEDED,
    ExecutionError,
    Outcome,
    Phase,
    Result,
    Status,
    clean_result_type,
)
from choreo_cli.signatures import CallSpec, Mismatch, inspect_callable, json_type_name

if TYPE_CHECKING:
    import asyncio

_new = object.__new__
# How a step stopped a record: (step outcome, record status, runtime error, also recorded?)
_Stop = tuple[Outcome, Status, ExecutionError, bool]


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


class _InputMismatch(Exception):
    def __init__(self, error: UnassignableInput) -> None:
        super().__init__(str(error))
        self.error = error


class _Planned:
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


class _Worker:
    """What one worker (thread) owns: its resources view, its Context and, lazily, an event loop.

    The Context is reused from record to record (its per-record fields are reset): a
    callable must not keep ``ctx`` beyond the record it was given for.
    """

    __slots__ = ("__weakref__", "ctx", "loop", "resources")

    def __init__(self, resources: Resources, values: Mapping[str, Any], flags: _RunFlags) -> None:
        self.resources = resources
        self.ctx = Context(values, resources, DataBag(), None, 0, None, flags)
        self.loop: asyncio.AbstractEventLoop | None = None

    def renew_context(self, old: Context) -> Context:
        """Give the worker a fresh Context for the rest of ``old``'s record.

        A callable that ran past its timeout keeps ``old`` (its ``cancelled`` stays true);
        the worker's next steps and records must not share it.
        """
        ctx = Context(
            old.values, old.resources, old.bag, old.record, old.index, old.line, old._flags
        )
        ctx._frame = old._frame
        ctx._conv = old._conv
        ctx._attempts = old._attempts
        self.ctx = ctx
        return ctx

    def run_coroutine(self, coro: Any) -> Any:
        import asyncio  # only pipelines with async callables pay for importing it

        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.new_event_loop()
            # A coordinator used without ``with`` or close() must not leak the loop.
            weakref.finalize(self, loop.close)
        return loop.run_until_complete(coro)

    def close(self, pool: ResourcePool) -> list[BaseException]:
        if self.loop is not None:
            self.loop.close()
            self.loop = None
        return pool.close_worker(self.resources._local)


class Coordinator:
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
        self._plan: list[_Planned] = []
        self._names: dict[str, str] = {}
        self._step_names: tuple[str, ...] = ()
        self._runner: RecordRunner | None = None
        self._serial: SerialRunner | None = None
        self._by_spec: dict[int, _Planned] = {}
        self._clean: type[Result] = clean_result_type((), would_run=dry_run)
        self._flags = _RunFlags()
        self._flags.dry_run = dry_run
        self._local: _Worker | None = None
        self._threads: _ThreadPool | None = None
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
        _check_options(step, job.name)
        planned = _Planned(step, pre, job)
        self._plan.append(planned)
        self._by_spec = {**self._by_spec, id(job): planned}
        if pre is not None:
            self._by_spec[id(pre)] = planned
        self._names = {**self._names, key: step.name}
        self._step_names = (*self._step_names, step.name)
        self._runner = self._serial = None
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

    def _thread_pool(self, *, prebuild: bool = False) -> _ThreadPool:
        with self._lock:
            if self._threads is None:
                self._threads = _ThreadPool(self, self.workers, prebuild=prebuild)
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
        try:
            self._pool.close()
        except Exception as exc:
            errors.append(exc)
        if errors:
            from choreo_cli.errors import ResourceError

            if len(errors) == 1 and isinstance(errors[0], ResourceError):
                raise errors[0]
            messages = "; ".join(f"{type(e).__name__}: {e}" for e in errors)
            raise ResourceError(f"resource teardown failed: {messages}") from errors[0]

    def __enter__(self) -> Coordinator:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _worker(self) -> _Worker:
        worker = self._local
        if worker is None:
            worker = self._local = _Worker(self._pool.view(), self.values, self._flags)
        return worker

    def new_worker(self) -> _Worker:
        """A worker state for another thread (used by executors)."""
        return _Worker(self._pool.view(), self.values, self._flags)

    def close_worker(self, worker: _Worker) -> list[BaseException]:
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

    def run_item(self, item: Any, index: int, worker: _Worker) -> Result:
        """Run one input item (a value, Record or InvalidLine) on the given worker."""
        cls = type(item)
        if cls is Record:
            number = index if item.index is None else item.index
            return self._execute(item.value, number, item.line, item.raw, worker)
        if cls is InvalidLine:
            return self._invalid(item, index if item.index is None else item.index)
        return self._execute(item, index, None, None, worker)

    def crashed(self, item: Any, index: int, exc: BaseException) -> Result:
        """A failed Result for an item whose run raised inside choreo itself."""
        error = ExecutionError(None, None, exc)
        line = getattr(item, "line", None)
        value = item.value if type(item) is Record else item
        return Result(
            index,
            line,
            value,
            FAILED,
            error,
            [error],
            DataBag(self._names),
            0.0,
            self._step_names,
            0,
            "failed",
            None,
            None,
            getattr(item, "raw", None),
        )

    def _invalid(self, item: InvalidLine, index: int) -> Result:
        error = ExecutionError(None, "input", item.exception)
        return Result(
            index,
            item.line,
            None,
            INVALID,
            error,
            [error],
            DataBag(self._names),
            0.0,
            self._step_names,
            0,
            None,
            None,
            None,
            item.raw,
        )

    def _execute(
        self, value: Any, index: int, line: int | None, raw: bytes | None, worker: _Worker
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

    # -- the rare paths of a record, called by the compiled runner ----------------------------

    def _on_skip(
        self,
        exc: Skip,
        i: int,
        bag: DataBag,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
    ) -> tuple[list[ExecutionError], list[int]]:
        """A precheck raised Skip: record it, keep its data, skip the job."""
        planned = self._plan[i]
        if exc.data is not None:
            if bag._pre is None:
                bag._pre = {}
            bag._pre[planned.key] = exc.data
        entry = ExecutionError(planned.name, "precheck", exc)
        return [*(errors or ()), entry], [*(skipped or ()), i]

    def _on_precheck_error(
        self,
        exc: BaseException,
        i: int,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
    ) -> tuple[list[ExecutionError] | None, list[int] | None, Result | None]:
        """A precheck raised something else: Cancel (and the like) stops the record; any
        other exception skips the job like Skip (choreograph parity)."""
        name = self._plan[i].name
        stops = self._classify(exc, name)
        if stops is not None:
            return (
                errors,
                skipped,
                self._stopped(ctx, raw, started, errors, skipped, i, stops, "precheck"),
            )
        entry = ExecutionError(name, "precheck", exc)
        return [*(errors or ()), entry], [*(skipped or ()), i], None

    def _on_job_error(
        self,
        exc: BaseException,
        i: int,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
    ) -> Result:
        """A job raised: the record is cancelled (Cancel), invalid, interrupted or failed."""
        name = self._plan[i].name
        kind = self._classify(exc, name) or (
            "failed",
            FAILED,
            ExecutionError(name, "job", exc),
            True,
        )
        return self._stopped(ctx, raw, started, errors, skipped, i, kind, "job")

    def _on_interrupted(
        self,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
        i: int,
    ) -> Result:
        """The run was interrupted before step ``i``: the record is cancelled."""
        name = self._plan[i].name
        stopped = Interrupted(f"interrupted before step {name!r}")
        kind: _Stop = ("not_run", CANCELLED, ExecutionError(name, None, stopped), False)
        return self._stopped(ctx, raw, started, errors, skipped, i, kind)

    def _finish(
        self,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
        stop: int,
    ) -> Result:
        """The Result of a record that ran every step, with skips or retried jobs."""
        attempts = ctx._attempts
        ctx._attempts = None
        return Result(
            ctx.index, ctx.line, ctx.record, SUCCEEDED, None, errors, ctx.bag,
            _since(started), self._step_names, stop, None, skipped, attempts, raw,
            self._flags.dry_run,
        )  # fmt: skip

    def _classify(self, exc: BaseException, name: str) -> _Stop | None:
        """How an exception from a callable stops the record, or None when it does not by itself.

        Returns (step outcome, record status, the runtime error, whether it is also an
        execution error); the phase is filled in by the caller.
        """
        if isinstance(exc, Cancel):
            return ("cancelled", CANCELLED, ExecutionError(name, None, exc), True)
        if isinstance(exc, _InputMismatch):
            return ("not_run", INVALID, ExecutionError(name, None, exc.error), True)
        if isinstance(exc, StepTimeout):  # a precheck's timeout fails the step, too
            return ("failed", FAILED, ExecutionError(name, None, exc), True)
        if isinstance(exc, _Abandoned):
            stopped = Interrupted(str(exc))
            return ("cancelled", CANCELLED, ExecutionError(name, None, stopped), False)
        if isinstance(exc, KeyboardInterrupt):
            self.interrupt("KeyboardInterrupt")
            stopped = Interrupted(f"interrupted during step {name!r}")
            return ("cancelled", CANCELLED, ExecutionError(name, None, stopped), False)
        return None

    def _stopped(
        self,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
        stop: int,
        kind: _Stop,
        phase: Phase | None = None,
    ) -> Result:
        """The Result of a record that a step stopped (cancelled, failed, invalid, interrupted)."""
        outcome, status, error, recorded = kind
        attempts = ctx._attempts
        ctx._attempts = None
        if recorded:
            error = ExecutionError(error.step, phase, error.exception)
            errors = [*(errors or ()), error]
        return Result(
            ctx.index, ctx.line, ctx.record, status, error, errors, ctx.bag,
            _since(started), self._step_names, stop, outcome, skipped, attempts, raw,
            self._flags.dry_run,
        )  # fmt: skip

    def _invoke(self, spec: CallSpec, ctx: Context, value: Any, worker: _Worker) -> Any:
        """The general call path: record conversion, async callables, timeout and retry."""
        adapter = spec.adapter
        if adapter is not None and spec.takes_record and value is not None:
            conv = ctx._conv
            if conv is None:
                conv = ctx._conv = {}
            try:
                arg = conv[adapter]
            except KeyError:
                try:
                    arg = conv[adapter] = adapter(value)
                except Mismatch as exc:
                    raise _InputMismatch(
                        UnassignableInput(
                            f"step {ctx.step!r}: {spec.name} declares its record as "
                            f"{spec.annotation}, but got a JSON {json_type_name(value)} ({exc})"
                        )
                    ) from None
        else:
            arg = value
        planned = self._by_spec.get(id(spec))
        if planned is None or (
            planned.timeout is None and (planned.retry is None or spec is not planned.job)
        ):
            return self._call(spec, ctx, arg, worker, None)
        if planned.retry is None or spec is not planned.job:
            return self._call(spec, ctx, arg, worker, planned.timeout)
        return self._retry(planned, ctx, arg, worker)

    def _call(
        self, spec: CallSpec, ctx: Context, arg: Any, worker: _Worker, timeout: float | None
    ) -> Any:
        """One attempt of a callable, bounded by ``timeout`` seconds when given."""
        if timeout is None:
            result = spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx)
            return worker.run_coroutine(result) if spec.is_async else result
        if spec.is_async:
            import asyncio

            coro = spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx)
            try:
                return worker.run_coroutine(asyncio.wait_for(coro, timeout))
            except asyncio.TimeoutError:
                ctx.timed_out = True
                raise _timeout(ctx, spec, timeout) from None
        return _call_with_deadline(spec, ctx, arg, worker, timeout)

    def _retry(self, planned: _Planned, ctx: Context, arg: Any, worker: _Worker) -> Any:
        """Call a job up to ``retry.attempts`` times; only the last failure counts."""
        policy = planned.retry
        spec = planned.job
        log = ctx.log
        attempt = 0
        while True:
            attempt += 1
            if ctx._attempts is None:
                ctx._attempts = {}
            ctx._attempts[planned.name] = attempt
            try:
                return self._call(spec, ctx, arg, worker, planned.timeout)
            except Cancel:
                raise
            except Exception as exc:
                if attempt >= policy.attempts or not isinstance(exc, policy.on):
                    raise
                wait = policy.wait(attempt)
                log.warning(
                    "attempt %d of %d failed (%s: %s); retrying in %.3g s",
                    attempt,
                    policy.attempts,
                    type(exc).__name__,
                    exc,
                    wait,
                )
                if self._flags.wait_interrupted(wait):
                    raise _Abandoned(
                        f"interrupted while waiting to retry step {planned.name!r}"
                    ) from exc
                if ctx.timed_out:  # a timed-out attempt left ctx behind: use a fresh one
                    ctx = worker.renew_context(ctx)


def _check_options(step: Step, job_name: str) -> None:
    """Refuse retry/timeout settings that could never take effect (never silently nothing)."""

    def fail(reason: str) -> StepDefinitionError:
        return StepDefinitionError(reason, step=step.name, phase="job", callable_name=job_name)

    if step.timeout is not None and not step.timeout > 0:
        raise fail(f"timeout must be a positive number of seconds, not {step.timeout!r}")
    retry = step.retry
    if retry is None:
        return
    if retry.attempts < 2:
        raise fail(
            f"retry.attempts is {retry.attempts}: the job would never be retried; "
            "set it to 2 or more, or remove retry"
        )
    from choreo_cli.retry_policy import refused_exception

    for cls in retry.on:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise fail(f"retry.on: {cls!r} is not an exception class")
        refused = refused_exception(cls)
        if refused is not None:
            raise fail(f"retry.on: {refused}")


def _since(started: float | None) -> float | None:
    return None if started is None else perf_counter() - started


class _Abandoned(Exception):
    pass


def _timeout(ctx: Context, spec: CallSpec, timeout: float) -> StepTimeout:
    return StepTimeout(f"{spec.name} ran past the step's timeout of {timeout:g} s")


def _call_with_deadline(
    spec: CallSpec, ctx: Context, arg: Any, worker: _Worker, timeout: float
) -> Any:
    """Run a sync callable on a helper thread and wait at most ``timeout`` seconds.

    Python cannot stop a running function: at the deadline the record fails with
    StepTimeout, ``ctx.cancelled`` turns true for the callable (which keeps its own
    Context: the worker takes a fresh one) and whatever it returns later is discarded.
    """
    outcome: list[Any] = []
    done = threading.Event()

    def target() -> None:
        try:
            outcome.append((True, spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx)))
        except BaseException as exc:
            outcome.append((False, exc))
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"choreo-step-{ctx.step}", daemon=True)
    thread.start()
    if not done.wait(timeout):
        ctx.timed_out = True
        worker.renew_context(ctx)
        raise _timeout(ctx, spec, timeout)
    ok, value = outcome[0]
    if ok:
        return value
    raise value


class _ThreadPool:
    """Worker threads that live as long as the coordinator (so worker resources stay put)."""

    def __init__(self, coordinator: Coordinator, size: int, *, prebuild: bool = False) -> None:
        self._coordinator = coordinator
        self._prebuild = prebuild
        self._tasks: queue.SimpleQueue[tuple[int, Any, queue.SimpleQueue[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._errors: list[BaseException] = []
        self._started: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._main, name=f"choreo-worker-{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()
        # Each worker builds its worker-scoped resources first: a failing factory is
        # reported here, before any record runs.
        failures = [e for e in (self._started.get() for _ in self._threads) if e is not None]
        if failures:
            self.shutdown()
            raise failures[0]

    def submit(self, seq: int, item: Any, outq: queue.SimpleQueue[Any]) -> None:
        self._tasks.put((seq, item, outq))

    def _main(self) -> None:
        coordinator = self._coordinator
        worker = coordinator.new_worker()
        try:
            try:
                if self._prebuild:
                    coordinator._pool.build_worker(worker.resources._local)
            except Exception as exc:
                self._started.put(exc)
            else:
                self._started.put(None)
            while True:
                task = self._tasks.get()
                if task is None:
                    return
                seq, item, outq = task
                try:
                    result = coordinator.run_item(item, seq, worker)
                except BaseException as exc:  # a defect must not hang the reader waiting for it
                    result = coordinator.crashed(item, seq, exc)
                outq.put((seq, result))
        finally:
            self._errors.extend(coordinator.close_worker(worker))

    def shutdown(self) -> list[BaseException]:
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()
        return self._errors
