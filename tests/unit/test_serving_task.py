"""Async callables on worker threads: awaited in place by one long-running task per worker
(workers.ThreadPool._serve_async) with the semantics of a task per call (one worker)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest

from choreo_cli import Context, Coordinator, Result, Step
from choreo_cli.core.retry import RetryPolicy

# One worker runs each async call with run() (a task per call); more run them in place.
WORKERS = [1, 3]

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


def _run(coordinator: Coordinator, records: Iterable[Any], seconds: float = 20) -> list[Result]:
    """run_many's Results, or a failed test (not a hung one) if they do not all come."""
    results: list[Result] = []
    done = threading.Event()

    def target() -> None:
        try:
            results.extend(coordinator.run_many(records))
        finally:
            done.set()

    threading.Thread(target=target, daemon=True).start()
    assert done.wait(seconds), f"run_many gave {len(results)} Results in {seconds} s"
    return results


def test_worker_threads_await_async_callables_in_one_task() -> None:
    seen: dict[int, set[asyncio.Task[Any] | None]] = {}
    lock = threading.Lock()

    async def job(ctx: Context, record: int) -> None:
        await asyncio.sleep(0.001)
        with lock:
            seen.setdefault(threading.get_ident(), set()).add(asyncio.current_task())

    with Coordinator(workers=3) as coordinator:
        coordinator.add_step(Step(name="a", job=job))
        results = _run(coordinator, range(30))
    assert [r.status for r in results] == ["succeeded"] * 30
    assert seen and all(len(tasks) == 1 for tasks in seen.values())


@pytest.mark.parametrize("workers", WORKERS)
def test_an_async_callable_runs_in_a_copy_of_the_context(workers: int) -> None:
    def before(ctx: Context, record: int) -> None:
        var.set(f"precheck {record}")

    async def job(ctx: Context, record: int) -> str:
        seen = var.get()
        var.set(f"job {record}")
        await asyncio.sleep(0)
        return seen

    def after(ctx: Context, record: int) -> str:
        return var.get()

    with Coordinator(workers=workers) as coordinator:
        coordinator.add_step(Step(name="a", precheck=before, job=job))
        coordinator.add_step(Step(name="b", job=after))
        results = _run(coordinator, range(6))
    # The job sees what a plain callable set before it; what the job sets stays in it.
    assert [r.bag.job("a") for r in results] == [f"precheck {n}" for n in range(6)]
    assert [r.bag.job("b") for r in results] == [f"precheck {n}" for n in range(6)]


@pytest.mark.parametrize("workers", WORKERS)
def test_a_plain_callable_next_to_async_ones_sees_no_running_loop(workers: int) -> None:
    async def fetch(ctx: Context, record: int) -> int:
        await asyncio.sleep(0)
        return record

    async def double(value: int) -> int:
        await asyncio.sleep(0)
        return value * 2

    def plain(ctx: Context, record: int) -> int:
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        return asyncio.run(double(record))  # a loop of its own, as on any thread

    with Coordinator(workers=workers) as coordinator:
        coordinator.add_step(Step(name="fetch", job=fetch))
        coordinator.add_step(Step(name="plain", job=plain))
        coordinator.add_step(Step(name="again", job=fetch))
        results = _run(coordinator, range(6))
    assert [r.status for r in results] == ["succeeded"] * 6
    assert [r.bag.job("plain") for r in results] == [n * 2 for n in range(6)]


@pytest.mark.parametrize("workers", WORKERS)
def test_a_timeout_cancels_an_async_job_at_the_deadline(workers: int) -> None:
    events: list[str] = []

    async def job(ctx: Context, record: int) -> str:
        if record % 2:
            return "quick"
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        return "late"

    with Coordinator(workers=workers) as coordinator:
        coordinator.add_step(Step(name="a", job=job, timeout=0.1))
        started = time.monotonic()
        results = _run(coordinator, range(4))
    assert time.monotonic() - started < 2
    assert [r.error.type if r.error else r.bag.job("a") for r in results] == [
        "StepTimeout",
        "quick",
        "StepTimeout",
        "quick",
    ]
    assert events == ["cancelled", "cancelled"]


@pytest.mark.parametrize("workers", WORKERS)
def test_an_async_job_is_retried(workers: int) -> None:
    calls: dict[int, int] = {}

    async def flaky(ctx: Context, record: int) -> int:
        calls[record] = calls.get(record, 0) + 1
        await asyncio.sleep(0)
        if calls[record] < 3:
            raise ConnectionError("try again")
        return record

    policy = RetryPolicy(attempts=3, delay=0.001)
    with Coordinator(workers=workers) as coordinator:
        coordinator.add_step(Step(name="a", job=flaky, retry=policy, timeout=1))
        results = _run(coordinator, range(4))
    assert [r.bag.job("a") for r in results] == list(range(4))
    assert calls == dict.fromkeys(range(4), 3)


def test_a_system_exit_raised_out_of_the_loop_fails_only_its_record() -> None:
    async def job(ctx: Context, record: int) -> int:
        await asyncio.sleep(0.001)
        if record == 1:
            # Under a timeout the job runs as a task of wait_for's: its SystemExit is
            # raised out of the loop, not only into the code that awaits it.
            raise SystemExit(3)
        return record

    # Worker threads only: with one worker (run() per call) wait_for's task, left behind,
    # raises it out of the loop once more during the next record's call.
    with Coordinator(workers=3) as coordinator:
        coordinator.add_step(Step(name="a", job=job, timeout=5))
        results = _run(coordinator, range(6))
    assert [r.status for r in results] == ["succeeded", "failed"] + ["succeeded"] * 4
    assert results[1].error is not None and results[1].error.type == "SystemExit"


@pytest.mark.parametrize("workers", WORKERS)
def test_a_job_that_cancels_its_own_task_fails_and_later_records_run(workers: int) -> None:
    async def job(ctx: Context, record: int) -> int:
        await asyncio.sleep(0)
        if record == 0:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
        return record

    with Coordinator(workers=workers) as coordinator:
        coordinator.add_step(Step(name="a", job=job))
        results = _run(coordinator, range(6))
    assert [r.status for r in results] == ["failed"] + ["succeeded"] * 5
    assert results[0].error is not None and results[0].error.type == "CancelledError"
    assert [r.bag.job("a") for r in results[1:]] == list(range(1, 6))
