"""Limits: the token bucket and the concurrency limit (with a clock of the test's own), and
how a step's callables wait for them."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_cli import Coordinator, RetryPolicy, Step
from choreo_cli.core.limits import (
    ConcurrencyLimit,
    Gate,
    Limit,
    LimitWaitInterrupted,
    RateLimit,
    format_rate,
    limit_figures,
    parse_rate,
    polling_sleep,
)


class FakeClock:
    """A clock that only moves when told; ``sleep`` moves it (never interrupted)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.now += seconds
        return False


# -- rates ----------------------------------------------------------------------------------


@given(
    count=st.floats(min_value=1e-3, max_value=1e6, allow_nan=False),
    unit=st.sampled_from(["s", "min", "h"]),
)
@settings(derandomize=True, max_examples=60)
def test_a_rate_is_read_in_calls_per_second(count: float, unit: str) -> None:
    seconds = {"s": 1, "min": 60, "h": 3600}[unit]
    assert parse_rate(f"{count!r}/{unit}") == pytest.approx(count / seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("20", "'20' is not a rate — write N/s, N/min or N/h, e.g. 20/s"),
        ("20/d", "'20/d' is not a rate — write N/s, N/min or N/h, e.g. 20/s"),
        ("x/s", "'x/s' is not a rate — write N/s, N/min or N/h, e.g. 20/s"),
        ("nan/s", "'nan/s' is not a rate — write N/s, N/min or N/h, e.g. 20/s"),
        ("0/s", "rate '0/s' must be more than 0 calls, e.g. 20/s"),
        ("-5/min", "rate '-5/min' must be more than 0 calls, e.g. 20/s"),
    ],
)
def test_a_bad_rate_says_how_to_write_one(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rate(text)
    assert str(caught.value) == message


def test_a_rate_is_written_in_a_readable_unit() -> None:
    assert [format_rate(r) for r in (50, 0.5, 2 / 3600, 25 / 60)] == [
        "50/s",
        "30/min",
        "2/h",
        "25/min",
    ]


# -- the token bucket -----------------------------------------------------------------------


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=80),
)
@settings(derandomize=True, max_examples=80)
def test_no_span_of_time_starts_more_than_burst_plus_rate_times_its_length(
    rate: float, burst: int, gaps: list[float]
) -> None:
    clock = FakeClock()
    bucket = RateLimit("api", rate=rate, burst=burst, clock=clock)
    starts = []
    for gap in gaps:
        clock.now += gap
        asked = clock.now
        start = bucket.reserve()
        assert start >= asked  # never before it asked
        starts.append(start)
    assert starts == sorted(starts)  # first come, first served
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            assert j - i + 1 <= burst + rate * (starts[j] - starts[i]) + 1e-6


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    burst=st.integers(min_value=1, max_value=20),
    calls=st.integers(min_value=1, max_value=100),
)
@settings(derandomize=True, max_examples=80)
def test_calls_that_all_come_at_once_start_at_the_full_rate(
    rate: float, burst: int, calls: int
) -> None:
    clock = FakeClock()
    bucket = RateLimit("api", rate=rate, burst=burst, clock=clock)
    starts = [bucket.reserve() for _ in range(calls)]
    # The first `burst` at once, then one every 1/rate seconds: no time is lost.
    expected = [max(0, k + 1 - burst) / rate for k in range(calls)]
    assert starts == pytest.approx(expected, abs=1e-9)


def test_a_wait_is_counted_and_slept_on_the_given_sleep() -> None:
    clock = FakeClock()
    bucket = RateLimit("api", rate=2, burst=1, clock=clock)
    bucket.enter(clock.sleep)
    bucket.enter(clock.sleep)
    assert clock.now == pytest.approx(0.5)
    assert bucket.waits == 1
    assert bucket.wait_seconds == pytest.approx(0.5)


def test_an_interrupted_wait_raises_and_gives_its_token_back() -> None:
    clock = FakeClock()
    bucket = RateLimit("crm_api", rate=1, burst=1, clock=clock)
    bucket.enter(clock.sleep)
    with pytest.raises(LimitWaitInterrupted, match="interrupted while waiting for limit 'crm_api'"):
        bucket.enter(lambda seconds: True)
    assert bucket.waits == 1  # an interrupted wait is a wait the summary counts
    clock.now = 1.0
    assert bucket.reserve() == 1.0  # the token the interrupted call took is back


def test_a_worker_share_divides_the_rate_and_the_burst_keeping_at_least_one() -> None:
    bucket = RateLimit("api", rate=50, burst=5, workers=4)
    assert (bucket.rate, bucket.burst, bucket.share()) == (12.5, 1.25, "12.5/s")
    assert RateLimit("api", rate=50, burst=5, workers=10).burst == 1.0
    assert ConcurrencyLimit("db", concurrency=4, workers=2).share() == 2
    assert ConcurrencyLimit("db", concurrency=4, workers=3).share() == 1
    assert ConcurrencyLimit("db", concurrency=1, workers=8).share() == 1


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RateLimit("a", rate=0), "limit 'a': rate must be more than 0, not 0"),
        (lambda: RateLimit("a", rate=1, burst=0), "limit 'a': burst must be at least 1, not 0"),
        (
            lambda: ConcurrencyLimit("a", concurrency=0),
            "limit 'a': concurrency must be at least 1, not 0",
        ),
        (
            lambda: ConcurrencyLimit("a", concurrency=1, workers=0),
            "limit 'a': workers must be at least 1, not 0",
        ),
    ],
)
def test_a_limit_that_could_never_let_a_call_in_is_refused(build: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        build()
    assert str(caught.value) == message


# -- the concurrency limit ------------------------------------------------------------------


@given(
    concurrency=st.integers(min_value=1, max_value=5),
    moves=st.lists(st.sampled_from(["arrive", "leave", "give up"]), max_size=120),
)
@settings(derandomize=True, max_examples=80)
def test_never_more_calls_inside_than_the_limit_and_slots_go_in_order_of_arrival(
    concurrency: int, moves: list[str]
) -> None:
    limit = ConcurrencyLimit("db", concurrency=concurrency)
    inside: list[int] = []
    waiting: list[tuple[int, Any]] = []
    woken: list[int] = []
    for number, move in enumerate(moves):
        if move == "arrive":
            waiter = limit._queue(functools.partial(woken.append, number))
            if waiter is None:
                assert not waiting
                inside.append(number)
            else:
                waiting.append((number, waiter))
        elif move == "leave" and inside:
            inside.pop(0)
            limit.leave()
        elif move == "give up" and waiting:
            number, waiter = waiting.pop(len(waiting) // 2)
            if waiter.granted:
                woken.remove(number)
            limit._give_up(waiter)
        # Whoever was handed a slot is inside now, in the order they came.
        granted = [n for n, w in waiting if w.granted]
        assert granted == woken and granted == [n for n, _ in waiting][: len(granted)]
        for n in granted:
            inside.append(n)
            waiting = [(m, w) for m, w in waiting if m != n]
        woken.clear()
        assert len(inside) == limit.inside <= concurrency
        assert not waiting or limit.inside == concurrency


def test_threads_never_exceed_the_concurrency() -> None:
    limit = ConcurrencyLimit("db", concurrency=3)
    lock = threading.Lock()
    state = {"inside": 0, "most": 0}

    def call() -> None:
        for _ in range(50):
            limit.enter(lambda seconds: False)
            with lock:
                state["inside"] += 1
                state["most"] = max(state["most"], state["inside"])
            time.sleep(0)
            with lock:
                state["inside"] -= 1
            limit.leave()

    threads = [threading.Thread(target=call) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert state["most"] <= 3 and limit.inside == 0


def test_coroutines_on_several_loops_never_exceed_the_concurrency() -> None:
    limit = ConcurrencyLimit("db", concurrency=2)
    lock = threading.Lock()
    state = {"inside": 0, "most": 0}
    sleep = polling_sleep(lambda: False)

    async def call() -> None:
        await limit.aenter(sleep)
        try:
            with lock:
                state["inside"] += 1
                state["most"] = max(state["most"], state["inside"])
            await asyncio.sleep(0)
            with lock:
                state["inside"] -= 1
        finally:
            limit.leave()

    async def many() -> None:
        await asyncio.gather(*(call() for _ in range(40)))

    threads = [threading.Thread(target=asyncio.run, args=(many(),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert state["most"] <= 2 and limit.inside == 0 and limit.waits > 0


def test_an_interrupted_wait_for_a_slot_leaves_the_line() -> None:
    limit = ConcurrencyLimit("warehouse", concurrency=1)
    assert limit.try_enter()
    with pytest.raises(LimitWaitInterrupted, match="limit 'warehouse'"):
        limit.enter(lambda seconds: True)
    assert limit.waits == 1
    limit.leave()
    assert limit.try_enter()  # nobody was left waiting in line


# -- gates ----------------------------------------------------------------------------------


class Recording(Limit):
    """A limit that notes when it is entered and left; ``refuse`` interrupts its wait."""

    def __init__(self, name: str, log: list[str], *, refuse: bool = False) -> None:
        super().__init__(name)
        self.log = log
        self.refuse = refuse

    def share(self) -> int:
        return 1

    def enter(self, sleep: Any) -> None:
        if self.refuse:
            raise LimitWaitInterrupted(self.name)
        self.log.append(f"enter {self.name}")

    def leave(self) -> None:
        self.log.append(f"leave {self.name}")


@given(names=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=6, unique=True))
@settings(derandomize=True, max_examples=50)
def test_a_gate_enters_its_limits_by_name_whatever_their_order(names: list[str]) -> None:
    log: list[str] = []
    gate = Gate([Recording(name, log) for name in names])
    gate.enter(lambda seconds: False)
    gate.leave()
    ordered = sorted(names)
    assert log == [f"enter {n}" for n in ordered] + [f"leave {n}" for n in reversed(ordered)]


def test_a_gate_interrupted_on_its_second_limit_leaves_the_first() -> None:
    log: list[str] = []
    gate = Gate([Recording("b", log, refuse=True), Recording("a", log)])
    with pytest.raises(LimitWaitInterrupted):
        gate.enter(lambda seconds: False)
    assert log == ["enter a", "leave a"]


def test_figures_per_limit() -> None:
    clock = FakeClock()
    bucket = RateLimit("api", rate=2, burst=1, workers=2, clock=clock)
    bucket.enter(clock.sleep)
    bucket.enter(clock.sleep)
    assert limit_figures([ConcurrencyLimit("db", concurrency=4), bucket]) == {
        "api": {"waits": 1, "wait_seconds": 1.0, "workers": 2, "share": "1/s"},
        "db": {"waits": 0, "wait_seconds": 0.0, "workers": 1, "share": 4},
    }


# -- steps that wait for limits -------------------------------------------------------------


@pytest.fixture(params=["compiled", "interpreted"])
def runner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CHOREO_RUNNER", request.param)
    return str(request.param)


def echo(ctx: Any, record: Any) -> Any:
    return record


async def aecho(ctx: Any, record: Any) -> Any:
    return record


@pytest.mark.parametrize("job", [echo, aecho])
@pytest.mark.parametrize("phase", ["job", "precheck"])
def test_an_interruption_during_a_wait_cancels_the_record(
    runner: str, job: Any, phase: str
) -> None:
    held = ConcurrencyLimit("crm_api", concurrency=1)
    assert held.try_enter()  # the only slot is taken: the call waits
    step = Step(name="push", job=job, precheck=echo)
    if phase == "job":
        step = dataclasses.replace(step, job_limits=(held,))
    else:
        step = dataclasses.replace(step, precheck_limits=(held,))
    coordinator = Coordinator(workers=2)
    coordinator.add_step(step)
    results: list[Any] = []
    with coordinator:
        thread = threading.Thread(target=lambda: results.extend(coordinator.run_many([1])))
        thread.start()
        deadline = time.monotonic() + 5
        while not held._waiters and time.monotonic() < deadline:
            time.sleep(0.01)
        coordinator.interrupt()
        thread.join(5)
    [result] = results
    assert result.status == "cancelled"
    assert result.error.step == "push" and result.error.phase is None
    assert str(result.error.exception) == "interrupted while waiting for limit 'crm_api'"
    assert result.steps == {"push": "cancelled"} and result.errors == []
    held.leave()
    assert held.inside == 0


@pytest.mark.parametrize("job", [echo, aecho])
def test_each_attempt_of_a_retried_job_waits_for_its_limits(runner: str, job: Any) -> None:
    log: list[str] = []
    attempts = []

    def flaky(ctx: Any, record: Any) -> Any:
        attempts.append(record)
        if len(attempts) < 3:
            raise ConnectionError("down")
        return record

    coordinator = Coordinator()
    coordinator.add_step(
        Step(
            name="push",
            job=flaky,
            retry=RetryPolicy(attempts=3),
            job_limits=(Recording("api", log),),
        )
    )
    result = coordinator.run(7)
    assert result.status == "succeeded" and result.attempts == {"push": 3}
    assert log == ["enter api", "leave api"] * 3


def test_the_wait_does_not_count_toward_the_timeout(runner: str) -> None:
    bucket = RateLimit("api", rate=4, burst=1)  # the second call waits 0.25 s
    coordinator = Coordinator()
    coordinator.add_step(Step(name="push", job=echo, timeout=0.15, job_limits=(bucket,)))
    with coordinator:
        results = list(coordinator.run_many([1, 2]))
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    assert bucket.waits == 1


def test_a_coordinator_lists_its_limits_once_each_by_name() -> None:
    api = RateLimit("api", rate=1)
    db = ConcurrencyLimit("db", concurrency=1)
    coordinator = Coordinator()
    coordinator.add_step(Step(name="a", job=echo, precheck=echo, precheck_limits=(api,)))
    coordinator.add_step(Step(name="b", job=echo, job_limits=(db, api)))
    assert [limit.name for limit in coordinator.limits] == ["api", "db"]
    assert Coordinator().limits == ()


def test_only_a_limited_callable_waits_and_a_plain_one_waits_inline() -> None:
    from choreo_cli.core.compiled import record_source

    coordinator = Coordinator(timings=False)
    coordinator.add_step(
        Step(name="push", job=echo, precheck=echo, job_limits=(RateLimit("api", rate=1),))
    )
    source = record_source(coordinator.plan).source
    assert "pre_0_enter" not in source and "v = pre_0(ctx, value)" in source  # no limit
    assert "    job_0_enter(wait_interrupted)\n" in source
    assert "v = invoke(" not in source  # a plain callable: no general path for its limit
