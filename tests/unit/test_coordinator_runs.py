"""What a run of a coordinator is: where it ends, what it yields when its input breaks, and
what an interruption stops (the run in progress, not the coordinator)."""

from __future__ import annotations

import contextlib
import random
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo_cli import Context, Coordinator, Interrupted, Result, Step
from choreo_cli.executors.base import PipelineSpec
from choreo_cli.executors.runner import BatchRunner
from choreo_cli.jsonl.line_runner import run_lines


@pytest.fixture(params=["compiled", "interpreted"])
def runner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with the generated runners and with the reference one."""
    name: str = request.param
    monkeypatch.setenv("CHOREO_RUNNER", name)
    return name


class InputBroke(Exception):
    pass


class Jobs:
    """A job that counts the records it ran (from any thread)."""

    def __init__(self, *, jitter: bool = False) -> None:
        self.ran: list[int] = []
        self._lock = threading.Lock()
        self._rng = random.Random(7) if jitter else None

    def __call__(self, ctx: Context, record: int) -> int:
        if self._rng is not None:
            with self._lock:
                delay = self._rng.random() * 0.002
            time.sleep(delay)  # records end out of order
        with self._lock:
            self.ran.append(record)
        return record


def breaking(count: int, error: BaseException) -> Iterator[int]:
    yield from range(count)
    raise error


def interrupted_by(result: Result) -> str | None:
    error = result.error
    if error is None or not isinstance(error.exception, Interrupted):
        return None
    return error.message


# -- an input that raises -------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("count", [0, 1, 37])
def test_run_many_yields_every_record_that_ran_then_raises_the_inputs_error(
    runner: str, workers: int, ordered: bool, count: int
) -> None:
    jobs = Jobs(jitter=True)
    error = InputBroke("the input broke")
    results: list[Result] = []
    with Coordinator(workers=workers) as coordinator:
        coordinator.add_step(Step(name="a", job=jobs))
        coordinator.add_step(Step(name="b", job=lambda ctx, record: record))
        with pytest.raises(InputBroke) as raised:
            for result in coordinator.run_many(breaking(count, error), ordered=ordered):
                results.append(result)
        assert raised.value is error
        # every item read ran (nothing interrupted them) and has its Result
        assert sorted(jobs.ran) == list(range(count))
        indices = [r.index for r in results]
        assert sorted(indices) == list(range(count))
        if ordered:
            assert indices == list(range(count))
        assert all(r.status == "succeeded" for r in results)
        # the coordinator runs again
        assert [r.status for r in coordinator.run_many(range(5))] == ["succeeded"] * 5


@pytest.mark.parametrize("workers", [2, 4])
def test_an_input_that_raises_after_an_interruption_still_gets_every_result(
    runner: str, workers: int
) -> None:
    """Records read before the input raised but stopped by an interruption: cancelled Results."""
    coordinator = Coordinator(workers=workers)
    gate = threading.Event()

    def source() -> Iterator[int]:
        yield 0
        yield 1
        gate.wait(10)
        raise InputBroke("late")

    def job(ctx: Context, record: int) -> int:
        if record == 0:
            coordinator.interrupt()
            gate.set()
        else:  # on another worker: still in step a when the interruption comes
            gate.wait(10)
        return record

    coordinator.add_step(Step(name="a", job=job))
    coordinator.add_step(Step(name="b", job=lambda ctx, record: record))
    results: list[Result] = []
    with coordinator:
        # the input raises, or not if the interruption came before the third item was asked
        with contextlib.suppress(InputBroke):
            for result in coordinator.run_many(source()):
                results.append(result)
        assert [r.index for r in results] == [0, 1]
        assert [r.status for r in results] == ["cancelled", "cancelled"]


# -- an interruption ends the run in progress, not the coordinator ---------------------------


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("how", ["interrupt", "KeyboardInterrupt"])
def test_after_an_interrupted_run_many_the_coordinator_runs_again(
    runner: str, workers: int, how: str
) -> None:
    coordinator = Coordinator(workers=workers)
    armed = [True]

    def job(ctx: Context, record: int) -> int:
        if record == 10 and armed[0]:
            armed[0] = False
            if how == "interrupt":
                coordinator.interrupt("stop")
            else:
                raise KeyboardInterrupt
        return record

    seen: list[bool] = []

    def after(ctx: Context, record: int) -> None:
        seen.append(ctx.cancelled)

    coordinator.add_step(Step(name="a", job=job))
    coordinator.add_step(Step(name="b", job=after))
    with coordinator:
        first = list(coordinator.run_many(range(1000)))
        assert len(first) < 1000
        assert any(r.status == "cancelled" for r in first)
        assert coordinator.interrupted  # what the run that ended was
        seen.clear()

        again = list(coordinator.run_many(range(50)))
        assert [r.index for r in again] == list(range(50))
        assert [r.status for r in again] == ["succeeded"] * 50
        assert seen == [False] * 50
        assert not coordinator.interrupted
        single = coordinator.run(7)
        assert single.status == "succeeded"
        assert single.bag.job("a") == 7


@pytest.mark.parametrize("how", ["interrupt", "KeyboardInterrupt"])
def test_an_interrupted_run_ends_with_it(runner: str, how: str) -> None:
    """A run() outside any other run is a run of its own: the next one runs."""
    coordinator = Coordinator()

    def job(ctx: Context, record: int) -> int:
        if record == -1:
            if how == "interrupt":
                coordinator.interrupt()
            else:
                raise KeyboardInterrupt
        return record

    coordinator.add_step(Step(name="a", job=job))
    coordinator.add_step(Step(name="b", job=lambda ctx, record: record))
    stopped = coordinator.run(-1)
    assert interrupted_by(stopped) == (
        "interrupted before step 'b'" if how == "interrupt" else "interrupted during step 'a'"
    )
    assert coordinator.interrupted
    assert coordinator.run(2).status == "succeeded"
    assert not coordinator.interrupted
    assert [r.status for r in coordinator.run_many(range(3))] == ["succeeded"] * 3


@pytest.mark.parametrize("workers", [1, 4])
def test_an_interruption_before_a_run_stops_that_run_only(runner: str, workers: int) -> None:
    """interrupt() while no run is in progress stops the next run at its start (a signal
    that comes just before `choreo run` starts its loop is not lost)."""
    read: list[int] = []

    def source() -> Iterator[int]:
        for n in range(5):
            read.append(n)
            yield n

    with Coordinator(workers=workers) as coordinator:
        coordinator.add_step(Step(name="a", job=lambda ctx, record: record))
        coordinator.interrupt()
        assert coordinator.interrupted
        assert list(coordinator.run_many(source())) == []
        assert read == []
        assert coordinator.interrupted  # the run that ended was interrupted
        assert [r.status for r in coordinator.run_many(source())] == ["succeeded"] * 5

        coordinator.interrupt()
        stopped = coordinator.run(1)
        assert interrupted_by(stopped) == "interrupted before step 'a'"
        assert coordinator.run(2).status == "succeeded"


@pytest.mark.parametrize("workers", [1, 4])
def test_a_run_many_closed_early_ends_its_run(runner: str, workers: int) -> None:
    with Coordinator(workers=workers) as coordinator:
        coordinator.add_step(Step(name="a", job=lambda ctx, record: record))
        results = coordinator.run_many(range(100))
        assert next(results).status == "succeeded"
        coordinator.interrupt()
        results.close()  # the consumer stops: the interrupted run ends
        assert coordinator.run(1).status == "succeeded"
        assert [r.status for r in coordinator.run_many(range(3))] == ["succeeded"] * 3


def test_a_run_within_a_run_many_does_not_end_it(runner: str) -> None:
    coordinator = Coordinator()
    coordinator.add_step(Step(name="a", job=lambda ctx, record: record))
    statuses: list[str] = []
    for result in coordinator.run_many(range(5)):
        statuses.append(result.status)
        if result.index == 1:
            coordinator.interrupt()
            # a run() inside the run_many is part of it: it leaves the interruption on
            statuses.append(coordinator.run(99).status)
    assert statuses == ["succeeded", "succeeded", "cancelled"]
    assert coordinator.run(3).status == "succeeded"


@pytest.mark.parametrize("workers", [1, 4])
def test_an_interruption_lasts_as_long_as_a_running_scope(runner: str, workers: int) -> None:
    """What a process or Dask worker does: its batches are one run."""
    coordinator = Coordinator(workers=workers)

    def job(ctx: Context, record: int) -> int:
        if record == 3:
            raise KeyboardInterrupt
        return record

    coordinator.add_step(Step(name="a", job=job))
    coordinator.add_step(Step(name="b", job=lambda ctx, record: record))
    with coordinator, coordinator.running():
        batch = [coordinator.run(n) for n in range(6)]
        assert [r.status for r in batch] == ["succeeded"] * 3 + ["cancelled"] * 3
        assert [r.status for r in coordinator.run_many(range(4))] == []
        later = [coordinator.run(n) for n in range(10, 13)]
        assert [interrupted_by(r) for r in later] == ["interrupted before step 'a'"] * 3
    assert coordinator.interrupted
    assert coordinator.run(4).status == "succeeded"
    with coordinator.running():
        assert [r.status for r in coordinator.run_many(range(3))] == ["succeeded"] * 3
        coordinator.interrupt()
    assert coordinator.run(5).status == "succeeded"


# -- run_lines (choreo run's loop) ---------------------------------------------------------


def test_run_lines_ends_its_run_when_its_generator_ends(runner: str) -> None:
    coordinator = Coordinator()

    def job(ctx: Context, record: int) -> int:
        if record == 2 and ctx.line == 2:
            coordinator.interrupt("stop")
        return record

    coordinator.add_step(Step(name="a", job=job))
    coordinator.add_step(Step(name="b", job=lambda ctx, record: record))
    out: list[bytes] = []
    emitted: list[Result] = []

    def lines(*batches: list[bytes]) -> list[int]:
        return list(
            run_lines(
                coordinator, batches, clean_line=b"%d %d", put=out.append, emit=emitted.append
            )
        )

    assert lines([b"1", b"2", b"3"]) == [1]
    assert [r.status for r in emitted] == ["cancelled"]
    assert coordinator.interrupted
    out.clear()
    assert lines([b"4", b"5"], [b"6"]) == [2, 1]
    assert out == [b"0 1", b"1 2", b"2 3"]
    assert not coordinator.interrupted
    coordinator.interrupt()  # before the run: it reads nothing
    assert lines([b"7"]) == []
    assert lines([b"8"]) == [1]


# -- the worker side of the process and Dask executors --------------------------------------

STEPS = """
    def work(ctx, record):
        if record.get("stop"):
            raise KeyboardInterrupt
        return record["id"]
"""

PIPELINE = """
    version: 1
    steps:
      - name: work
        job: steps:work
      - name: after
        job: steps:work
"""


def test_a_batch_runner_stays_interrupted_for_all_its_batches(runner: str, tmp_path: Path) -> None:
    (tmp_path / "steps.py").write_text(textwrap.dedent(STEPS), encoding="utf-8")
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(PIPELINE), encoding="utf-8")
    batch_runner = BatchRunner(PipelineSpec.for_file(path))
    coordinator = batch_runner.coordinator
    try:
        records = [{"id": n, "stop": n == 2} for n in range(5)]
        count, _, _, others = batch_runner.run((0, None, records, None))
        # records 0 and 1 ran clean; 2 stopped the run: the batch ends there
        assert count == 3
        assert [position for position, _ in others] == [2]
        assert batch_runner.stop.value
        # the coordinator stays interrupted (a record another thread runs for the same
        # run stops before its next step), record after record, until the runner closes
        assert coordinator.interrupted
        for n in (5, 6):
            assert interrupted_by(coordinator.run({"id": n})) == "interrupted before step 'work'"
    finally:
        assert batch_runner.close() == []
    assert coordinator.run({"id": 7}).status == "succeeded"


def test_records_in_flight_when_an_interrupted_run_many_is_closed_run_no_further_step(
    runner: str,
) -> None:
    release = threading.Event()
    second: list[int] = []

    def first(ctx: Context, record: int) -> int:
        if record:
            assert release.wait(10)
        return record

    with Coordinator(workers=4) as coordinator:
        coordinator.add_step(Step(name="a", job=first))
        coordinator.add_step(Step(name="b", job=lambda ctx, record: second.append(record)))
        results = coordinator.run_many(range(100))
        assert next(results).index == 0  # the others wait in step a
        coordinator.interrupt()
        threading.Timer(0.2, release.set).start()
        results.close()  # returns once the records in flight have stopped
        time.sleep(0.5)  # time enough for a record that went on to step b
        assert second == [0]
        assert coordinator.run(5).status == "succeeded"
        assert second == [0, 5]
