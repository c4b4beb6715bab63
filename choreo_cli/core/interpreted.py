"""The reference runner: a record's steps as a plain loop over the plan.

The compiled runners (compiled.py) unroll the same semantics into straight-line code for
speed; this loop is what they are held to in the tests (tests/unit/test_reference_runner.py),
and what runs records when the environment variable ``CHOREO_RUNNER=interpreted`` is set,
to rule the generated code out while debugging::

    CHOREO_RUNNER=interpreted choreo run pipeline.yaml -i in.jsonl

It covers ``Coordinator.run``, ``run_many`` (one worker or the thread pool, async steps
included) and `choreo run`'s line loop (``choreo_cli.jsonl.line_runner.run_lines``); the
choice is made when a coordinator first runs a record after its last ``add_step``. Every
callable goes through the general call path (``Plan.invoke``); the rare paths are the same
``Outcomes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from choreo_cli.core.compiled import reference_selected
from choreo_cli.core.context import DataBag
from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.core.timings import note as note_time
from choreo_cli.errors import Skip

if TYPE_CHECKING:
    from choreo_cli.core.compiled import AsyncRecordRunner, RecordRunner, SerialRunner
    from choreo_cli.core.context import Context
    from choreo_cli.core.plan import Plan
    from choreo_cli.core.result import Result
    from choreo_cli.core.signatures import CallSpec
    from choreo_cli.core.watchdog import Stuck
    from choreo_cli.core.workers import Worker


# Whether the environment asks for this runner (see compiled.py: the check is there, so
# that a run with the compiled code does not import this module).
selected = reference_selected


def build_runner(plan: Plan) -> tuple[RecordRunner, SerialRunner]:
    """``run(value, index, line, raw, worker)`` and ``run_serial(records, worker)``, as
    ``compiled.compile_runner`` makes them.

    >>> from choreo_cli.core.coordinator import Coordinator
    >>> from choreo_cli.core.step import Step
    >>> coordinator = Coordinator()
    >>> coordinator.add_step(Step(name="double", job=lambda ctx, record: record * 2))
    >>> run, _ = build_runner(coordinator.plan)
    >>> run(21, 0, None, None, coordinator.local_worker()).bag.job("double")
    42
    """

    def run(value: Any, index: int, line: int | None, raw: bytes | None, worker: Worker) -> Result:
        return _Record(plan, worker, value, index, line, raw).run()

    def run_serial(records: Iterable[Any], worker: Worker) -> Iterator[Result]:
        flags = plan.flags
        flags.begin()  # one run of the coordinator, until the generator ends
        try:
            if flags.interrupted:
                return
            for index, item in enumerate(records):
                cls = type(item)
                if cls is InvalidLine:
                    yield plan.outcomes.invalid(item, index if item.index is None else item.index)
                elif cls is Record:
                    number = index if item.index is None else item.index
                    yield run(item.value, number, item.line, item.raw, worker)
                else:
                    yield run(item, index, None, None, worker)
                if flags.interrupted:  # checked before the next item is taken
                    return
        finally:
            flags.end()

    return run, run_serial


def build_async_runner(plan: Plan) -> AsyncRecordRunner:
    """``async def run_async(value, index, line, raw, worker)``, as
    ``compiled.compile_async_runner`` makes it."""

    async def run_async(
        value: Any, index: int, line: int | None, raw: bytes | None, worker: Worker
    ) -> Result:
        return await _Record(plan, worker, value, index, line, raw).run_async()

    return run_async


class _Record:
    """One record's run: the steps in order, each callable through the general path."""

    def __init__(
        self,
        plan: Plan,
        worker: Worker,
        value: Any,
        index: int,
        line: int | None,
        raw: bytes | None,
    ) -> None:
        self.plan = plan
        self.worker = worker
        self.value = value
        self.raw = raw
        self.started = perf_counter() if plan.timings else None
        self.errors: list[Any] | None = None
        self.skipped: list[int] | None = None
        ctx = worker.ctx
        ctx.bag = DataBag(plan.names)
        ctx.record = value
        ctx.index = index
        ctx.line = line
        ctx._conv = None
        ctx.timed_out = False
        worker.slot.started = self.started  # for the watchdog's snapshot (watchdog.py)

    @property
    def ctx(self) -> Context:
        return self.worker.ctx  # a timeout gives the worker a fresh one

    def run(self, first: int = 0) -> Result:
        """The record's steps from step ``first`` on (a record resumed after a timeout
        starts past the step of its timed-out call)."""
        outcomes = self.plan.outcomes
        steps = self.plan.steps
        for i in range(first, len(steps)):
            planned = steps[i]
            stopped = self._before(i)
            if stopped is not None:
                return stopped
            if planned.pre is not None:
                try:
                    found = self._call(planned.pre, (planned.name, "precheck"))
                except BaseException as exc:
                    stopped = self._precheck_failed(exc, i)
                    if stopped is not None:
                        return stopped
                    continue
                self._keep(found, planned.key, job=False)
            if self.plan.dry_run:
                continue
            try:
                found = self._call(planned.job, (planned.name, "job"))
            except BaseException as exc:
                return outcomes.on_job_error(
                    exc, i, self.ctx, self.raw, self.started, self.errors, self.skipped
                )
            self._keep(found, planned.key, job=True)
        return self._end()

    async def run_async(self) -> Result:
        outcomes = self.plan.outcomes
        for i, planned in enumerate(self.plan.steps):
            stopped = self._before(i)
            if stopped is not None:
                return stopped
            if planned.pre is not None:
                try:
                    found = await self._acall(planned.pre, (planned.name, "precheck"))
                except BaseException as exc:
                    stopped = self._precheck_failed(exc, i)
                    if stopped is not None:
                        return stopped
                    continue
                self._keep(found, planned.key, job=False)
            if self.plan.dry_run:
                continue
            try:
                found = await self._acall(planned.job, (planned.name, "job"))
            except BaseException as exc:
                return outcomes.on_job_error(
                    exc, i, self.ctx, self.raw, self.started, self.errors, self.skipped
                )
            self._keep(found, planned.key, job=True)
        return self._end()

    def _before(self, i: int) -> Result | None:
        """The Result of a record interrupted before step ``i``, or None to run the step."""
        if self.plan.flags.interrupted:
            return self.plan.outcomes.on_interrupted(
                self.ctx, self.raw, self.started, self.errors, self.skipped, i
            )
        self.ctx._frame = self.plan.steps[i].frame
        return None

    def _call(self, spec: CallSpec, key: tuple[str, str]) -> Any:
        """Call ``spec``, timed as ``key`` (step, phase): every call (core/timings.py)."""
        started = perf_counter()
        try:
            return self.plan.invoke(spec, self.ctx, self.value, self.worker)
        finally:
            note_time(self.worker, key, perf_counter() - started, 1)

    async def _acall(self, spec: CallSpec, key: tuple[str, str]) -> Any:
        if not spec.is_async:
            from asyncio import events  # not at module level: `choreo run` need not import asyncio

            # A plain callable must not see the worker's loop running (as on a thread
            # without one).
            events._set_running_loop(None)
            try:
                return self._call(spec, key)
            finally:
                events._set_running_loop(self.worker.loop)
        started = perf_counter()
        try:
            return await self.plan.ainvoke(spec, self.ctx, self.value, self.worker)
        finally:
            note_time(self.worker, key, perf_counter() - started, 1)

    def _precheck_failed(self, exc: BaseException, i: int) -> Result | None:
        """A precheck raised: the job is skipped, or the record stopped (its Result)."""
        outcomes = self.plan.outcomes
        if isinstance(exc, Skip):
            self.errors, self.skipped = outcomes.on_skip(
                exc, i, self.ctx.bag, self.errors, self.skipped
            )
            self._publish()
            return None
        self.errors, self.skipped, stopped = outcomes.on_precheck_error(
            exc, i, self.ctx, self.raw, self.started, self.errors, self.skipped
        )
        self._publish()
        return stopped

    def _publish(self) -> None:
        """Keep the record's errors where the watchdog's snapshot finds them (watchdog.py)."""
        slot = self.worker.slot
        slot.errors = (slot.unit, self.ctx.index, self.errors, self.skipped)

    def _keep(self, found: Any, key: str, *, job: bool) -> None:
        if found is None:
            return
        bag = self.ctx.bag
        if job:
            if bag._job is None:
                bag._job = {}
            bag._job[key] = found
        else:
            if bag._pre is None:
                bag._pre = {}
            bag._pre[key] = found

    def _end(self) -> Result:
        """The Result of a record that ran every step."""
        plan = self.plan
        ctx = self.ctx
        if self.errors is None and ctx._attempts is None:
            result: Result = object.__new__(plan.clean)
            result.index = ctx.index
            result.line = ctx.line
            result.input = self.value
            result.raw = self.raw
            result.bag = ctx.bag
            result.duration = None if self.started is None else perf_counter() - self.started
            return result
        return plan.outcomes.finish(
            ctx, self.raw, self.started, self.errors, self.skipped, len(plan.steps)
        )


def finish_stuck(plan: Plan, worker: Worker, stuck: Stuck, raw: bytes | None) -> Result:
    """The rest of a record whose timed call the watchdog gave up on (see watchdog.py), on
    a fresh worker: the step fails with StepTimeout, or a retried job goes on with its
    next attempt, then the record with its later steps.

    ``stuck`` is the record as it stood at the deadline (its bag, attempts and errors);
    ``raw`` its input line, when kept. The worker is left with a bag of its own (the
    Result keeps the record's; the line loop reuses the worker's).
    """
    try:
        return _finish_stuck(plan, worker, stuck, raw)
    finally:
        worker.ctx.bag = DataBag(plan.names)


def _finish_stuck(plan: Plan, worker: Worker, stuck: Stuck, raw: bytes | None) -> Result:
    from choreo_cli.core.calling import converted, retry, timed_out, wait_to_retry

    timed = stuck.timed
    i = timed.step
    planned = plan.steps[i]
    record = _Record(plan, worker, stuck.record, stuck.index, stuck.line, raw)
    record.started = stuck.started
    record.errors, record.skipped = stuck.errors, stuck.skipped
    ctx = worker.ctx
    ctx.bag = stuck.bag
    ctx._attempts = stuck.attempts
    ctx._conv = stuck.conv
    ctx._frame = planned.frame
    error = timed_out(ctx, timed.spec, timed.timeout)
    if timed.phase == "precheck":
        stopped = record._precheck_failed(error, i)  # a precheck's timeout fails the step
        assert stopped is not None
        return stopped
    try:
        if planned.retry is None:
            raise error
        attempt = (stuck.attempts or {}).get(planned.name, 1)
        ctx = wait_to_retry(planned, ctx, worker, plan.flags, attempt, error)
        arg = converted(planned.job, ctx, stuck.record)
        found = retry(
            planned,
            ctx,
            arg,
            worker,
            plan.timed.get(id(planned.job)),
            plan.flags,
            attempt=attempt,
            gate=plan.gates.get(id(planned.job)),
        )
    except BaseException as exc:
        return plan.outcomes.on_job_error(
            exc, i, record.ctx, raw, record.started, record.errors, record.skipped
        )
    record._keep(found, planned.key, job=True)
    return record.run(first=i + 1)
