"""The compiled runners give what the interpreted reference gives, for any pipeline.

Random pipelines (prechecks and jobs that return, skip, fail or cancel depending on the
record, retried jobs that fail once, async callables, dry runs) over random items are run
twice: by the generated code, and with ``CHOREO_RUNNER=interpreted`` by the plain loop of
``choreo_cli.core.interpreted``. Every Result, every call and every written byte must be
the same, through ``Coordinator.run``, ``run_many`` (one worker and the thread pool) and
`choreo run`'s fused line loop (``run_lines``). Timeouts, which take real time, have a
test of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_cli import Cancel, Context, Coordinator, Result, RetryPolicy, Skip, Step
from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.jsonl.line_runner import run_lines
from choreo_cli.jsonl.writer import ResultWriter

PrecheckAction = Literal["value", "none", "skip", "skip no data", "error", "cancel"]
JobAction = Literal["value", "none", "error", "cancel"]
PRECHECKS: list[PrecheckAction] = ["value", "none", "skip", "skip no data", "error", "cancel"]
JOBS: list[JobAction] = ["value", "none", "error", "cancel"]
GENERATED = "<choreo generated "


@dataclasses.dataclass(frozen=True)
class StepShape:
    """One step: what its precheck (None: no precheck) and job do, per ``record % 3``."""

    precheck: tuple[PrecheckAction, PrecheckAction, PrecheckAction] | None
    job: tuple[JobAction, JobAction, JobAction]
    retry: bool  # RetryPolicy(attempts=2); the job fails once for records 0, 1 and 2
    async_precheck: bool
    async_job: bool


@dataclasses.dataclass(frozen=True)
class PipelineShape:
    steps: tuple[StepShape, ...]
    dry_run: bool
    timings: bool
    # (record, step): that step's job (the step number modulo the steps) interrupts the
    # run when it runs for that record.
    interrupt: tuple[int, int] | None
    # False: every callable is plain (the thread pool then runs the sync runner, not the
    # async one); True: the steps' own async_precheck and async_job.
    any_async: bool


def three(options: list[Any]) -> st.SearchStrategy[Any]:
    return st.tuples(*[st.sampled_from(options)] * 3)


values = st.integers(0, 5)  # record % 3 picks the action, record // 3 a first failure
step_shapes = st.builds(
    StepShape,
    precheck=st.none() | three(PRECHECKS),
    job=three(JOBS),
    retry=st.booleans(),
    async_precheck=st.booleans(),
    async_job=st.booleans(),
)
pipelines = st.builds(
    PipelineShape,
    steps=st.lists(step_shapes, min_size=1, max_size=4).map(tuple),
    dry_run=st.booleans(),
    timings=st.booleans(),
    interrupt=st.none() | st.tuples(values, st.integers(0, 3)),
    any_async=st.booleans(),
)
# Plain values, Records (numbered by the coordinator or with an index of their own) and
# lines that were not JSON.
items = st.lists(
    st.one_of(
        values,
        values.map(lambda v: ("record", v)),
        values.map(lambda v: ("numbered", v)),
        st.just(("invalid", 0)),
    ),
    max_size=10,
)


def materialize(drawn: list[Any]) -> list[Any]:
    """The items as run_many takes them; each item's index is its own (a retry counts
    attempts per index, which must not depend on which worker runs first)."""
    made: list[Any] = []
    for position, item in enumerate(drawn):
        if isinstance(item, int):
            made.append(item)
        elif item[0] == "record":
            made.append(Record(item[1], position + 1, b"%d\n" % item[1]))
        elif item[0] == "numbered":
            made.append(Record(item[1], position + 1, None, index=100 + position))
        else:
            made.append(InvalidLine(position + 1, ValueError(f"line {position + 1} is not JSON")))
    return made


class Calls:
    """(record index, step, phase) of every call, from any thread."""

    def __init__(self) -> None:
        self.log: list[tuple[int, str, str]] = []
        self.tries: dict[tuple[int, int], int] = {}
        self.lock = threading.Lock()

    def add(self, ctx: Context, step: str, phase: str) -> None:
        with self.lock:
            self.log.append((ctx.index, step, phase))

    def attempt(self, ctx: Context, i: int) -> int:
        with self.lock:
            count = self.tries[ctx.index, i] = self.tries.get((ctx.index, i), 0) + 1
            return count


def name_of(i: int) -> str:
    return f"Step {i}"  # mixed case: keys are case-insensitive


def precheck_of(i: int, shape: StepShape, calls: Calls) -> Callable[..., Any]:
    assert shape.precheck is not None
    actions = shape.precheck
    name = name_of(i)

    def act(ctx: Context, record: int) -> Any:
        calls.add(ctx, name, "precheck")
        action = actions[record % 3]
        if action == "value":
            return ("pre", i, record)
        if action == "skip":
            raise Skip(f"skip {record}", data=("skip", i, record))
        if action == "skip no data":
            raise Skip(f"skip {record}")
        if action == "error":
            raise ValueError(f"precheck {i} failed on {record}")
        if action == "cancel":
            raise Cancel(f"precheck {i} cancelled {record}")
        return None

    if shape.async_precheck:

        async def precheck_async(ctx: Context, record: int) -> Any:
            return act(ctx, record)

        return precheck_async

    def precheck(ctx: Context, record: int) -> Any:
        return act(ctx, record)

    return precheck


def job_of(
    i: int, shape: StepShape, calls: Calls, interrupt: Callable[[int, int], None]
) -> Callable[..., Any]:
    actions = shape.job
    name = name_of(i)

    def act(ctx: Context, record: int) -> Any:
        calls.add(ctx, name, "job")
        interrupt(record, i)
        if shape.retry and calls.attempt(ctx, i) == 1 and (record // 3) % 2 == 0:
            raise ConnectionError(f"job {i} failed once on {record}")
        action = actions[record % 3]
        if action == "value":
            return ("job", i, record)
        if action == "error":
            raise ValueError(f"job {i} failed on {record}")
        if action == "cancel":
            raise Cancel(f"job {i} cancelled {record}")
        return None

    if shape.async_job:

        async def job_async(ctx: Context, record: int) -> Any:
            return act(ctx, record)

        return job_async

    def job(ctx: Context, record: int) -> Any:
        return act(ctx, record)

    return job


def build(pipeline: PipelineShape, calls: Calls, *, workers: int = 1) -> Coordinator:
    coordinator = Coordinator(workers=workers, dry_run=pipeline.dry_run, timings=pipeline.timings)

    def interrupt(record: int, i: int) -> None:
        if pipeline.interrupt is None:
            return
        on, step = pipeline.interrupt
        if record == on and i == step % len(pipeline.steps):
            coordinator.interrupt("stop")

    for i, shape in enumerate(pipeline.steps):
        if not pipeline.any_async:
            shape = dataclasses.replace(shape, async_precheck=False, async_job=False)
        coordinator.add_step(
            Step(
                name=name_of(i),
                precheck=None if shape.precheck is None else precheck_of(i, shape, calls),
                job=job_of(i, shape, calls, interrupt),
                retry=RetryPolicy(attempts=2) if shape.retry else None,
            )
        )
    return coordinator


def fields(result: Result) -> tuple[Any, ...]:
    """Everything a Result says, comparable."""

    def error(e: Any) -> tuple[Any, ...]:
        return (e.step, e.phase, e.type, e.message)

    return (
        result.index,
        result.line,
        result.input,
        result.status,
        result.steps,
        None if result.error is None else error(result.error),
        [error(e) for e in result.errors],
        result.bag.as_dict(),
        result.attempts,
        result.clean,
        result.raw,
        result.duration is None,
    )


def runner_files(coordinator: Coordinator) -> set[bool]:
    """For each runner the coordinator made: is it generated code?"""
    runners: list[Any] = [coordinator._runner, coordinator._serial, coordinator._async_runner]
    return {r.__code__.co_filename.startswith(GENERATED) for r in runners if r is not None}


Way = Callable[[Coordinator, list[Any]], list[Result]]


def each_run(coordinator: Coordinator, made: list[Any]) -> list[Result]:
    return [coordinator.run(item, index=i) for i, item in enumerate(made)]


def run_many(coordinator: Coordinator, made: list[Any]) -> list[Result]:
    return list(coordinator.run_many(made))


def twice(
    way: Way, pipeline: PipelineShape, made: list[Any], *, workers: int = 1
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[int, str, str]]]]:
    """(fields of the Results, calls) compiled, then interpreted."""
    for interpreted in (False, True):
        with pytest.MonkeyPatch.context() as patch:
            if interpreted:
                patch.setenv("CHOREO_RUNNER", "interpreted")
            else:
                patch.delenv("CHOREO_RUNNER", raising=False)
            calls = Calls()
            coordinator = build(pipeline, calls, workers=workers)
            try:
                results = way(coordinator, made)
            finally:
                coordinator.close()
            if workers == 1 and any(type(item) is not InvalidLine for item in made):
                assert runner_files(coordinator) == {not interpreted}
            log = calls.log if workers == 1 else sorted(calls.log)
            yield [fields(r) for r in results], log


@settings(derandomize=True, database=None, max_examples=150, deadline=None)
@given(pipelines, items)
def test_run_and_run_many_on_one_worker_give_what_the_reference_gives(
    pipeline: PipelineShape, drawn: list[Any]
) -> None:
    made = materialize(drawn)
    for way in (each_run, run_many):
        compiled, reference = twice(way, pipeline, made)
        assert compiled == reference


@settings(derandomize=True, database=None, max_examples=100, deadline=None)
@given(pipelines, items)
def test_run_many_on_the_thread_pool_gives_what_the_reference_gives(
    pipeline: PipelineShape, drawn: list[Any]
) -> None:
    """Two workers; a plan with async steps runs them awaited in place on each worker's
    loop (``run_item_async``). No interruption: which records it stops depends on timing."""
    pipeline = dataclasses.replace(pipeline, interrupt=None)
    compiled, reference = twice(run_many, pipeline, materialize(drawn), workers=2)
    assert compiled == reference


# -- timeouts (not drawn above: a timeout takes real time) -------------------------------


def through_lines(coordinator: Coordinator, made: list[Any]) -> list[Result]:
    emitted: list[Result] = []
    lines = [[b"%d" % value for value in made]]
    written: list[bytes] = []
    list(
        run_lines(coordinator, lines, clean_line=b"%d %d", put=written.append, emit=emitted.append)
    )
    assert not written  # no record of these tests is clean
    return emitted


# The step's timeout covers its precheck too: long enough that a loaded machine does not
# time out the quick calls (20 ms once failed the skipped record's precheck in CI).
TIMEOUT = 0.15


def skip_two(ctx: Context, record: int) -> None:
    if record == 2:
        raise Skip("not this one")


def slow_on_one(ctx: Context, record: int) -> int:
    if record == 1:
        time.sleep(0.4)  # far past the timeout: a helper thread, abandoned
    return record


async def slow_on_one_async(ctx: Context, record: int) -> int:
    if record == 1:
        await asyncio.sleep(1)  # cancelled at the timeout
    return record


def timed_out_job(job: Callable[..., Any]) -> list[Step]:
    retry = RetryPolicy(attempts=2)
    return [Step(name="slow", precheck=skip_two, job=job, timeout=TIMEOUT, retry=retry)]


def timed_out_precheck(job: Callable[..., Any]) -> list[Step]:
    return [
        Step(name="first", precheck=skip_two, job=fetch, retry=RetryPolicy(attempts=2)),
        Step(name="second", precheck=job, job=fetch, timeout=TIMEOUT),
    ]


def fetch(ctx: Context, record: int) -> int:
    return record


@pytest.mark.parametrize("job", [slow_on_one, slow_on_one_async])
@pytest.mark.parametrize("way", [each_run, run_many, through_lines])
@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            timed_out_job,
            [
                ("failed", {"slow": 2}, {"slow": "failed"}),
                ("succeeded", {}, {"slow": "skipped"}),
                ("succeeded", {"slow": 1}, {"slow": "succeeded"}),
            ],
        ),
        (
            timed_out_precheck,
            [
                ("failed", {"first": 1}, {"first": "succeeded", "second": "failed"}),
                ("succeeded", {}, {"first": "skipped", "second": "succeeded"}),
                ("succeeded", {"first": 1}, {"first": "succeeded", "second": "succeeded"}),
            ],
        ),
    ],
)
def test_a_timeout_leaves_no_attempts_to_the_next_record(
    monkeypatch: pytest.MonkeyPatch,
    job: Callable[..., Any],
    way: Way,
    steps: Callable[[Callable[..., Any]], list[Step]],
    expected: list[tuple[Any, ...]],
) -> None:
    """A timeout gives the worker a fresh Context, and the record that failed must end on
    it (its attempts are reset there). The generated code once ended it on the old one: the
    next record, whose retried job never ran, showed the attempts of the record before."""
    got = {}
    for runner in ("compiled", "interpreted"):
        monkeypatch.setenv("CHOREO_RUNNER", runner)
        coordinator = Coordinator(timings=False)
        for step in steps(job):
            coordinator.add_step(step)
        try:
            got[runner] = [(r.status, r.attempts, r.steps) for r in way(coordinator, [1, 2, 3])]
        finally:
            coordinator.close()
    assert got["compiled"] == got["interpreted"] == expected


def test_the_environment_variable_selects_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Else the tests above compare the generated code with itself."""

    def frames(ctx: Context, record: Any) -> bool:
        import sys

        frame: Any = sys._getframe()
        while frame is not None:
            if frame.f_code.co_filename.startswith(GENERATED):
                return True
            frame = frame.f_back
        return False

    def ran_generated(workers: int) -> list[bool]:
        coordinator = Coordinator(workers=workers)
        coordinator.add_step(Step(name="where", job=frames))
        try:
            return [r.bag.job("where") for r in coordinator.run_many([1, 2])]
        finally:
            coordinator.close()

    monkeypatch.delenv("CHOREO_RUNNER", raising=False)
    assert ran_generated(1) == ran_generated(2) == [True, True]
    monkeypatch.setenv("CHOREO_RUNNER", "compiled")
    assert ran_generated(1) == [True, True]
    monkeypatch.setenv("CHOREO_RUNNER", "interpreted")
    assert ran_generated(1) == ran_generated(2) == [False, False]


# -- `choreo run`'s fused line loop ---------------------------------------------------------

LINES = st.lists(
    st.one_of(
        values.map(lambda v: b"%d" % v),
        st.sampled_from([b"", b"  ", b"\r", b"{bad", b"\xff\xfe", b"4\r", b'"text"']),
    ),
    max_size=12,
)


@dataclasses.dataclass
class Written:
    out: bytes
    counts: list[int]
    emitted: list[tuple[Any, ...]]
    calls: list[tuple[int, str, str]]


def through_run_lines(
    pipeline: PipelineShape,
    lines: list[bytes],
    *,
    max_lines: int,
    keep_raw: bool,
    with_tally: bool,
    stop_at: int | None,
) -> Written:
    calls = Calls()
    coordinator = build(pipeline, calls)
    writer = ResultWriter(io.BytesIO())
    clean_line = writer.clean_line(coordinator.clean_steps())
    assert clean_line is not None
    out: list[bytes] = []
    emitted: list[Result] = []

    def emit(result: Result) -> bool:
        emitted.append(result)
        out.append(writer.encoder.encode(result))
        return len(emitted) == stop_at

    batches = [lines[i : i + max_lines] for i in range(0, len(lines), max_lines)]
    counts = list(
        run_lines(
            coordinator,
            iter(batches),
            clean_line=clean_line,
            put=out.append,
            emit=emit,
            keep_raw=keep_raw,
            tally=(lambda result: None) if with_tally else None,
        )
    )
    writer.close()
    coordinator.close()
    # Read at the end: a Result must not be touched by the records after it.
    return Written(b"".join(out), counts, [fields(r) for r in emitted], calls.log)


@settings(derandomize=True, database=None, max_examples=150, deadline=None)
@given(
    pipelines,
    LINES,
    st.sampled_from([1, 2, 5, 1024]),
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(1, 3),
)
def test_run_lines_writes_what_the_interpreted_loop_writes(
    pipeline: PipelineShape,
    lines: list[bytes],
    max_lines: int,
    keep_raw: bool,
    with_tally: bool,
    stop_at: int | None,
) -> None:
    """The same bytes, clean counts per list, stops and calls. With a tally (as `choreo run`
    gives) the compiled loop writes records with skipped jobs from a template per pattern
    and emits fewer Results, so only the bytes, counts and calls are compared."""
    if with_tally:
        stop_at = None  # where a true emit stops depends on which Results are emitted

    def through(*, with_tally: bool) -> Written:
        return through_run_lines(
            pipeline,
            lines,
            max_lines=max_lines,
            keep_raw=keep_raw,
            with_tally=with_tally,
            stop_at=stop_at,
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CHOREO_RUNNER", raising=False)
        compiled = through(with_tally=with_tally)
        patch.setenv("CHOREO_RUNNER", "interpreted")
        reference = through(with_tally=False)
    assert compiled.out == reference.out
    assert compiled.counts == reference.counts
    assert compiled.calls == reference.calls
    if not with_tally:
        assert compiled.emitted == reference.emitted


def test_the_interpreted_line_loop_is_plain_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHOREO_RUNNER", "interpreted")
    coordinator = Coordinator()
    coordinator.add_step(Step(name="double", job=lambda ctx, record: record * 2))
    out: list[bytes] = []
    emitted: list[Result] = []
    counts = list(
        run_lines(
            coordinator,
            [[b"1", b"", b"x"], [b"2"]],
            clean_line=b"%d:%d ",
            put=out.append,
            emit=emitted.append,
        )
    )
    assert counts == [1, 1]
    assert out == [b"0:1 ", b"2:4 "]
    assert [(r.index, r.line, r.status) for r in emitted] == [(1, 3, "invalid")]
    runner: Any = coordinator.compiled(("run_lines", False), lambda plan: None)
    assert not runner.__code__.co_filename.startswith(GENERATED)
