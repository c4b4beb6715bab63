"""`retry:` and `timeout:` (design §4) in the Coordinator: attempts, waits, logs, deadlines."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from choreo_cli import Cancel, Context, Coordinator, Skip, Step, StepDefinitionError
from choreo_cli.core.retry import RetryPolicy
from choreo_cli.errors import PipelineError, StepTimeout
from choreo_cli.pipeline.loader import load_pipeline


def _flaky(failures: list[BaseException], calls: list[int]) -> Callable[..., Any]:
    """A job that raises ``failures`` in turn, then returns the number of calls."""

    def job(ctx: Context, record: Any) -> int:
        calls.append(len(calls) + 1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return len(calls)

    return job


def _coordinator(*steps: Step, workers: int = 1) -> Coordinator:
    coordinator = Coordinator(workers=workers)
    for step in steps:
        coordinator.add_step(step)
    return coordinator


def _retry_warnings(caplog: pytest.LogCaptureFixture, step: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == f"choreo.step.{step}" and r.levelno == logging.WARNING
    ]


# -- retry --------------------------------------------------------------------------------


def test_a_job_is_retried_until_it_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    job = _flaky([ConnectionError("try 1"), ConnectionError("try 2")], calls)
    coordinator = _coordinator(Step(name="load", job=job, retry=RetryPolicy(attempts=5)))
    with caplog.at_level(logging.WARNING):
        result = coordinator.run({"id": 1})
    assert result.status == "succeeded"
    assert result.attempts == {"load": 3}
    assert result.errors == [] and result.error is None  # earlier failures do not count
    assert result.bag.job("load") == 3
    assert _retry_warnings(caplog, "load") == [
        "attempt 1 of 5 failed (ConnectionError: try 1); retrying in 0 s",
        "attempt 2 of 5 failed (ConnectionError: try 2); retrying in 0 s",
    ]


def test_only_the_last_failure_is_the_steps_error(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    job = _flaky([ValueError(f"try {n}") for n in (1, 2, 3)], calls)
    coordinator = _coordinator(
        Step(name="load", job=job, retry=RetryPolicy(attempts=3)),
        Step(name="after", job=lambda ctx: 1),
    )
    with caplog.at_level(logging.WARNING):
        result = coordinator.run(1)
    assert calls == [1, 2, 3]
    assert result.status == "failed"
    assert result.attempts == {"load": 3}
    assert [(e.step, e.phase, e.type, e.message) for e in result.errors] == [
        ("load", "job", "ValueError", "try 3")
    ]
    assert result.error == result.errors[0]
    assert result.steps == {"load": "failed", "after": "not_run"}
    # Each failed attempt that is retried is logged; the last one is the step's error.
    assert len(_retry_warnings(caplog, "load")) == 2


def test_a_step_that_succeeds_at_once_still_reports_one_attempt() -> None:
    coordinator = _coordinator(
        Step(name="a", job=lambda ctx: 1, retry=RetryPolicy(attempts=2)),
        Step(name="b", job=lambda ctx: 2),
    )
    assert coordinator.run(None).attempts == {"a": 1}


def test_the_wait_grows_by_backoff_up_to_max_delay() -> None:
    policy = RetryPolicy(attempts=6, delay=0.5, backoff=2, max_delay=3)
    assert [policy.wait(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3, 3]
    assert RetryPolicy(attempts=3, delay=0.25).wait(2) == 0.25


def test_delay_and_backoff_are_respected(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    stamps: list[float] = []
    job = _flaky([OSError("a"), OSError("b"), OSError("c")], calls)

    def timed(ctx: Context, record: Any) -> int:
        stamps.append(time.monotonic())
        return job(ctx, record)

    policy = RetryPolicy(attempts=4, delay=0.05, backoff=2, max_delay=0.15)
    coordinator = _coordinator(Step(name="s", job=timed, retry=policy))
    with caplog.at_level(logging.WARNING):
        result = coordinator.run(1)
    assert result.status == "succeeded" and result.attempts == {"s": 4}
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # 0.05, 0.1, then 0.2 capped at 0.15; roughly (scheduling adds, never subtracts).
    for gap, wanted in zip(gaps, [0.05, 0.1, 0.15], strict=True):
        assert wanted - 0.005 <= gap < wanted + 0.25, gaps
    assert "retrying in 0.1 s" in _retry_warnings(caplog, "s")[1]


@pytest.mark.parametrize(
    ("raised", "retried"),
    [
        (ConnectionError("x"), True),
        (ConnectionResetError("x"), True),  # a subclass of a listed class
        (TimeoutError("x"), True),
        (ValueError("x"), False),
        (Skip("a job raising Skip fails"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_on_lists_the_exceptions_that_are_retried(raised: BaseException, retried: bool) -> None:
    calls: list[int] = []
    policy = RetryPolicy(attempts=3, on=(ConnectionError, TimeoutError))
    coordinator = _coordinator(Step(name="s", job=_flaky([raised] * 5, calls), retry=policy))
    result = coordinator.run(1)
    assert result.status == "failed"
    assert result.error is not None and result.error.type == type(raised).__name__
    assert calls == ([1, 2, 3] if retried else [1])
    assert result.attempts == {"s": len(calls)}


def test_cancel_is_never_retried() -> None:
    calls: list[int] = []
    coordinator = _coordinator(
        Step(name="s", job=_flaky([Cancel("stop")] * 3, calls), retry=RetryPolicy(attempts=3))
    )
    result = coordinator.run(1)
    assert calls == [1]
    assert result.status == "cancelled" and result.attempts == {"s": 1}
    assert result.error is not None and result.error.type == "Cancel"


@pytest.mark.parametrize("raised", [SystemExit(3), GeneratorExit("g")], ids=type)
def test_base_exceptions_fail_the_job_without_a_retry(raised: BaseException) -> None:
    calls: list[int] = []
    coordinator = _coordinator(
        Step(name="s", job=_flaky([raised] * 3, calls), retry=RetryPolicy(attempts=3))
    )
    result = coordinator.run(1)
    assert calls == [1]
    assert result.status == "failed"
    assert result.error is not None and result.error.type == type(raised).__name__


def test_retry_applies_to_the_job_only() -> None:
    prechecks: list[int] = []

    def precheck(ctx: Context, record: Any) -> None:
        prechecks.append(1)
        raise ConnectionError("precheck down")

    calls: list[int] = []
    step = Step(name="s", job=_flaky([], calls), precheck=precheck, retry=RetryPolicy(attempts=3))
    result = _coordinator(step).run(1)
    assert prechecks == [1] and calls == []
    assert result.status == "succeeded" and result.steps == {"s": "skipped"}
    assert result.attempts == {}


def test_an_interrupt_during_the_wait_cancels_the_record_at_once() -> None:
    calls: list[int] = []
    policy = RetryPolicy(attempts=3, delay=30)
    coordinator = _coordinator(Step(name="s", job=_flaky([OSError("x")] * 3, calls), retry=policy))
    timer = threading.Timer(0.1, coordinator.interrupt)
    timer.start()
    started = time.monotonic()
    result = coordinator.run(1)
    timer.join()
    assert time.monotonic() - started < 5
    assert calls == [1]
    assert result.status == "cancelled"
    assert result.error is not None and result.error.type == "Interrupted"
    assert result.error.message == "interrupted while waiting to retry step 's'"
    assert result.errors == []


def test_each_record_counts_its_own_attempts() -> None:
    state = {"n": 0}

    def job(ctx: Context, record: int) -> int:
        state["n"] += 1
        if record == 1 and state["n"] < 3:
            raise OSError("flaky")
        return record

    coordinator = _coordinator(Step(name="s", job=job, retry=RetryPolicy(attempts=3)))
    results = list(coordinator.run_many([1, 2, 3]))
    assert [r.attempts for r in results] == [{"s": 3}, {"s": 1}, {"s": 1}]


# -- settings that could never take effect are refused ------------------------------------


class _NotAnError(BaseException):
    pass


class _MyCancel(Cancel):
    pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"retry": RetryPolicy(attempts=1)},
            "retry.attempts is 1: the job would never be retried; set it to 2 or more, "
            "or remove retry",
        ),
        (
            {"retry": RetryPolicy(attempts=3, on=(KeyboardInterrupt,))},
            "retry.on: KeyboardInterrupt is not an Exception class",
        ),
        (
            {"retry": RetryPolicy(attempts=3, on=(_NotAnError,))},
            "retry.on: _NotAnError is not an Exception class",
        ),
        (
            {"retry": RetryPolicy(attempts=3, on=(_MyCancel,))},
            "retry.on: _MyCancel cancels the record: it is never retried",
        ),
        ({"timeout": 0.0}, "timeout must be a positive number of seconds, not 0.0"),
        ({"timeout": -1.0}, "timeout must be a positive number of seconds, not -1.0"),
    ],
)
def test_settings_that_could_never_take_effect_are_refused(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(StepDefinitionError) as caught:
        _coordinator(Step(name="s", job=lambda ctx: 1, **options))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("retry", "message"),
    [
        ("{attempts: 1}", "'attempts' must be at least 2, not 1"),
        ("{on: [KeyboardInterrupt]}", "retry.on: KeyboardInterrupt is not an Exception class"),
        ("{on: ['choreo_cli:Cancel']}", "retry.on: Cancel cancels the record"),
    ],
)
def test_load_pipeline_refuses_them_too(tmp_path: Path, retry: str, message: str) -> None:
    (tmp_path / "steps_rt.py").write_text("def job(ctx):\n    return 1\n", encoding="utf-8")
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"version: 1\nsteps:\n  - name: s\n    job: steps_rt:job\n    retry: {retry}\n",
        encoding="utf-8",
    )
    with pytest.raises(PipelineError) as caught, load_pipeline(path).coordinator():
        pass
    assert message in str(caught.value.problems[0])


# -- timeout ------------------------------------------------------------------------------


class _Slow:
    """A sync job that sleeps past its deadline, then notes what it saw."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.finished = threading.Event()
        self.cancelled_after: bool | None = None
        self.cancelled_before: bool | None = None

    def __call__(self, ctx: Context, record: Any) -> str:
        self.cancelled_before = ctx.cancelled
        time.sleep(self.seconds)
        self.cancelled_after = ctx.cancelled
        self.finished.set()
        return "late"


def test_a_sync_job_past_its_timeout_fails_the_record_at_the_deadline() -> None:
    slow = _Slow(0.6)
    after: list[Any] = []
    coordinator = _coordinator(
        Step(name="slow", job=slow, timeout=0.1),
        Step(name="after", job=lambda ctx, record: after.append(record)),
    )
    started = time.monotonic()
    result = coordinator.run({"id": 1})
    elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 0.45, elapsed
    assert result.status == "failed"
    assert result.steps == {"slow": "failed", "after": "not_run"}
    assert result.error is not None
    assert (result.error.step, result.error.phase, result.error.type) == (
        "slow",
        "job",
        "StepTimeout",
    )
    assert result.error.message.endswith("ran past the step's timeout of 0.1 s")
    assert isinstance(result.error.exception, StepTimeout)
    assert after == []
    # The callable keeps running in the background and sees ctx.cancelled turn true;
    # what it returns is discarded.
    assert slow.finished.wait(5)
    assert slow.cancelled_before is False and slow.cancelled_after is True
    time.sleep(0.05)
    assert not result.bag.has_job("slow")
    assert result.status == "failed"


def test_the_run_goes_on_with_the_next_record_and_a_fresh_context() -> None:
    seen: list[tuple[Any, bool]] = []

    def job(ctx: Context, record: Any) -> Any:
        if record == "slow":
            time.sleep(0.5)
        seen.append((record, ctx.cancelled))
        return record

    coordinator = _coordinator(Step(name="s", job=job, timeout=0.1))
    started = time.monotonic()
    results = list(coordinator.run_many(["a", "slow", "b", "c"]))
    assert time.monotonic() - started < 0.45
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded", "succeeded"]
    assert [r.bag.job("s") for r in results] == ["a", None, "b", "c"]
    time.sleep(0.6)
    assert sorted(seen) == [("a", False), ("b", False), ("c", False), ("slow", True)]


def test_timeouts_with_four_workers() -> None:
    def job(ctx: Context, record: int) -> int:
        if record % 4 == 0:
            time.sleep(0.4)
        return record

    coordinator = _coordinator(Step(name="s", job=job, timeout=0.1), workers=4)
    with coordinator:
        results = list(coordinator.run_many(range(12)))
    assert [r.index for r in results] == list(range(12))
    assert [r.status for r in results] == [
        "failed" if n % 4 == 0 else "succeeded" for n in range(12)
    ]


def test_an_async_job_past_its_timeout_is_cancelled() -> None:
    events: list[str] = []

    async def job(ctx: Context, record: Any) -> str:
        try:
            await asyncio.sleep(2)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        events.append("finished")
        return "late"

    coordinator = _coordinator(Step(name="a", job=job, timeout=0.1))
    started = time.monotonic()
    first, second = coordinator.run_many([1, 2])
    assert time.monotonic() - started < 1
    for result in (first, second):
        assert result.status == "failed"
        assert result.error is not None and result.error.type == "StepTimeout"
        assert not result.bag.has_job("a")
    assert events == ["cancelled", "cancelled"]


def test_a_precheck_timeout_fails_the_step() -> None:
    jobs: list[Any] = []

    def precheck(ctx: Context, record: Any) -> None:
        time.sleep(0.4)

    coordinator = _coordinator(
        Step(name="p", precheck=precheck, job=lambda ctx, r: jobs.append(r), timeout=0.1),
        Step(name="q", job=lambda ctx, r: jobs.append(r)),
    )
    result = coordinator.run(1)
    assert result.status == "failed"
    assert result.steps == {"p": "failed", "q": "not_run"}
    assert result.error is not None
    assert (result.error.phase, result.error.type) == ("precheck", "StepTimeout")
    assert jobs == []


def test_a_precheck_timeout_in_a_dry_run_fails_the_step_too() -> None:
    def precheck(ctx: Context, record: Any) -> None:
        time.sleep(0.4)

    coordinator = Coordinator(dry_run=True)
    coordinator.add_step(Step(name="p", precheck=precheck, job=lambda ctx: 1, timeout=0.1))
    result = coordinator.run(1)
    assert result.status == "failed" and result.steps == {"p": "failed"}


def test_timeout_bounds_each_attempt_of_a_retried_job(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[bool] = []

    def job(ctx: Context, record: Any) -> int:
        calls.append(ctx.cancelled)
        if len(calls) == 1:
            time.sleep(0.5)
        return len(calls)

    coordinator = _coordinator(
        Step(name="s", job=job, timeout=0.1, retry=RetryPolicy(attempts=2, on=(StepTimeout,)))
    )
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        result = coordinator.run(1)
    assert time.monotonic() - started < 0.45
    assert result.status == "succeeded" and result.attempts == {"s": 2}
    assert result.bag.job("s") == 2
    # The second attempt gets a Context that is not cancelled.
    assert calls == [False, False]
    assert "StepTimeout" in _retry_warnings(caplog, "s")[0]


def test_a_job_within_its_timeout_is_untouched() -> None:
    coordinator = _coordinator(Step(name="s", job=lambda ctx, r: r * 2, timeout=5))
    result = coordinator.run(21)
    assert result.status == "succeeded" and result.bag.job("s") == 42
