"""Call timings (core/timings.py): the histogram, and which calls the runners time."""

from __future__ import annotations

import pickle
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from choreo_cli.core.coordinator import Coordinator
from choreo_cli.core.step import Step
from choreo_cli.core.timings import BOUNDS, EVERY, PhaseTimes, StepTimes
from choreo_cli.errors import Skip

durations = st.lists(st.floats(min_value=0, max_value=2000, allow_nan=False), max_size=200)


@given(durations.filter(bool), st.sampled_from([0.5, 0.95]))
def test_a_quantile_lies_in_the_bucket_of_the_true_one(values: list[float], q: float) -> None:
    times = PhaseTimes()
    for value in values:
        times.add(value)
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 1)))  # the smallest value with q of the calls
    true = ordered[rank - 1]
    bucket = next((i for i, bound in enumerate(BOUNDS) if true <= bound), len(BOUNDS))
    low = BOUNDS[bucket - 1] if bucket else 0.0
    high = BOUNDS[bucket] if bucket < len(BOUNDS) else times.max
    assert low <= times.quantile(q) <= max(high, times.max) or times.quantile(q) == times.max


def test_cumulative_buckets_end_with_every_call_and_a_call_on_a_bound_is_in_its_bucket() -> None:
    times = PhaseTimes()
    for value in (0.001, 0.001, 0.0015, 5000.0):
        times.add(value)
    buckets = dict(times.cumulative())
    assert buckets[0.001] == 2 and buckets[0.0015] == 3 and buckets[1000.0] == 3
    assert buckets[float("inf")] == 4


def test_weights_count_calls_that_were_not_timed() -> None:
    times = PhaseTimes()
    times.add(0.002, weight=10)
    assert (times.calls, times.timed, times.total) == (10, 1, pytest.approx(0.02))
    assert times.to_json() == {
        "calls": 10,
        "timed": 1,
        "total": 0.02,
        "p50": pytest.approx(0.00175, abs=1e-6),
        "p95": pytest.approx(0.00197, abs=1e-5),
        "max": 0.002,
    }


def test_step_times_merge_and_travel_between_processes() -> None:
    first, second = StepTimes(), StepTimes()
    first.phase("a", "job").add(0.5)
    second.phase("a", "job").add(1.5)
    second.phase("b", "precheck").add(0.1)
    first.merge(pickle.loads(pickle.dumps(second)))
    job = first.get("a", "job")
    assert job is not None and (job.calls, job.max) == (2, 1.5)
    assert first.to_json("b") == {"precheck": first.phase("b", "precheck").to_json(), "job": None}


def skip_odd(ctx: Any, record: int) -> None:
    if record % 2:
        raise Skip("odd")


def quick(ctx: Any, record: int) -> int:
    return record


def slow(ctx: Any, record: int) -> None:
    time.sleep(0.0002)


def run(steps: list[Step], count: int, *, workers: int = 1) -> StepTimes:
    coordinator = Coordinator(workers=workers, timings=False)
    for step in steps:
        coordinator.add_step(step)
    try:
        results = list(coordinator.run_many(range(count)))
        assert len(results) == count
        return coordinator.call_times()
    finally:
        coordinator.close()


@pytest.mark.parametrize("runner", ["compiled", "interpreted"])
@pytest.mark.parametrize("workers", [1, 3])
def test_every_call_of_a_slow_step_is_timed(
    monkeypatch: pytest.MonkeyPatch, runner: str, workers: int
) -> None:
    monkeypatch.setenv("CHOREO_RUNNER", runner)
    times = run([Step(name="load", precheck=skip_odd, job=slow)], 60, workers=workers)
    job, precheck = times.get("load", "job"), times.get("load", "precheck")
    assert job is not None and precheck is not None
    # Calls of 0.2 ms are slow: every record is timed, and the records that skipped
    # the job (odd ones) between them do not stop that.
    if workers == 1:
        assert (job.calls, job.timed) == (30, 30)
        assert (precheck.calls, precheck.timed) == (60, 60)
    else:  # a thread may be handed several odd records in a row
        assert job.timed >= 20 and 20 <= job.calls <= 40
    assert job.max >= 0.0002 and job.total >= 0.0002 * job.timed


def test_the_calls_of_a_fast_step_are_sampled_and_counted_as_a_whole() -> None:
    count = 20 * EVERY
    times = run([Step(name="fast", job=quick)], count)
    job = times.get("fast", "job")
    assert job is not None
    assert job.timed < count // 10
    # Each timed record stands for those run since the one before: the estimate is off
    # by at most the records run after the last one timed.
    assert count - 2 * EVERY <= job.calls <= count
