"""Concurrency: ordering, bounded read-ahead, async overlap and interruption of run_many."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from choreo_cli import Context, Coordinator, Interrupted, Result, Step

WAIT = 10.0  # seconds: a safety net so a broken coordinator fails the test instead of hanging


class Source:
    """A generator of records that counts how many items were read from it."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit
        self.produced = 0

    def __iter__(self) -> Iterator[int]:
        for n in range(self.limit):
            self.produced += 1
            yield n


def delayed_coordinator(workers: int, seed: int, count: int) -> Coordinator:
    rng = random.Random(seed)
    delays = [rng.random() * 0.003 for _ in range(count)]

    def check(ctx: Context, record: int) -> int:
        time.sleep(delays[record] / 2)
        return record

    def job(ctx: Context, record: int) -> tuple[int, int | None]:
        time.sleep(delays[record])
        return (record, ctx.bag.precheck("work"))

    coordinator = Coordinator(workers=workers)
    coordinator.add_step(Step(name="work", precheck=check, job=job))
    return coordinator


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ordered_output_under_random_delays(seed: int) -> None:
    with delayed_coordinator(4, seed, 200) as coordinator:
        results = list(coordinator.run_many(range(200)))
    assert [r.index for r in results] == list(range(200))
    assert [r.input for r in results] == list(range(200))
    assert [r.bag.job("work") for r in results] == [(n, n) for n in range(200)]
    assert all(r.status == "succeeded" for r in results)


def test_unordered_yields_every_index_exactly_once() -> None:
    with delayed_coordinator(4, 7, 200) as coordinator:
        results = list(coordinator.run_many(range(200), ordered=False))
    assert sorted(r.index for r in results) == list(range(200))
    assert all(r.input == r.index and r.bag.job("work") == (r.index, r.index) for r in results)


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("workers", [1, 4])
def test_read_ahead_is_bounded_on_a_million_item_generator(workers: int, ordered: bool) -> None:
    source = Source()
    with Coordinator(workers=workers) as coordinator:
        coordinator.add_step(Step(name="echo", job=lambda ctx, record: record))
        results = coordinator.run_many(source, ordered=ordered)
        first = list(itertools.islice(results, 5))
        assert len(first) == 5
        assert source.produced <= 5 + 4 * workers
        more = list(itertools.islice(results, 20))
        assert len(more) == 20
        assert source.produced <= 25 + 4 * workers
        if workers == 1:
            assert source.produced == 25
        results.close()  # type: ignore[attr-defined]


def test_read_ahead_is_bounded_while_one_record_is_slow() -> None:
    """Ordered output waits for record 0: the reader must not run ahead meanwhile."""
    source = Source()
    outstanding: list[int] = []
    consumed = 0
    release = threading.Event()

    def job(ctx: Context, record: int) -> int:
        if record == 0:
            release.wait(0.2)
        return record

    def watched() -> Iterator[int]:
        for item in source:
            outstanding.append(source.produced - consumed)
            yield item
            if source.produced >= 200:
                return

    with Coordinator(workers=4) as coordinator:
        coordinator.add_step(Step(name="slow first", job=job))
        for result in coordinator.run_many(watched()):
            assert result.index == consumed
            consumed += 1
    assert consumed == 200
    assert max(outstanding) <= 4 * 4


def test_async_callables_really_overlap() -> None:
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    async def job(ctx: Context, record: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        await asyncio.sleep(0.2)
        with lock:
            in_flight -= 1
        return record

    with Coordinator(workers=4) as coordinator:
        coordinator.add_step(Step(name="sleep", job=job))
        started = time.perf_counter()
        results = list(coordinator.run_many(range(8)))
        elapsed = time.perf_counter() - started
    assert [r.bag.job("sleep") for r in results] == list(range(8))
    assert 2 <= peak <= 4  # never more than `workers` records at once
    assert elapsed < 1.0  # one at a time would take 1.6 s


# -- interrupt() ----------------------------------------------------------------------------


def interrupted_before(result: Result) -> str | None:
    error = result.error
    if error is None or not isinstance(error.exception, Interrupted):
        return None
    return error.message


def test_interrupt_with_one_worker() -> None:
    stop_at = 5
    source = Source()
    calls: list[tuple[int, str]] = []
    cancelled_seen: list[bool] = []
    coordinator = Coordinator()

    def first(ctx: Context, record: int) -> None:
        calls.append((record, "a"))
        if record == stop_at:
            coordinator.interrupt()
            cancelled_seen.append(ctx.cancelled)

    def second(ctx: Context, record: int) -> None:
        calls.append((record, "b"))

    coordinator.add_step(Step(name="a", job=first))
    coordinator.add_step(Step(name="b", job=second))
    results = list(coordinator.run_many(source))
    assert coordinator.interrupted
    assert cancelled_seen == [True]
    assert source.produced == stop_at + 1  # no input read after the interruption
    assert [r.index for r in results] == list(range(stop_at + 1))
    assert [r.status for r in results] == ["succeeded"] * stop_at + ["cancelled"]
    last = results[-1]
    assert interrupted_before(last) == "interrupted before step 'b'"
    assert last.errors == []
    assert last.steps == {"a": "succeeded", "b": "not_run"}
    assert calls[-2:] == [(stop_at - 1, "b"), (stop_at, "a")]
    # the interruption ended that run, not the coordinator
    assert coordinator.run(99).status == "succeeded"


def test_interrupt_with_four_workers() -> None:
    """Record N interrupts while N+1 is in its first job and the reader is inside next()."""
    stop_at = 20
    coordinator = Coordinator(workers=4)
    done_b = threading.Semaphore(0)
    next_in_a = threading.Event()
    reader_waiting = threading.Event()
    interrupted = threading.Event()
    asked: list[int] = []
    ran: list[tuple[int, str]] = []
    lock = threading.Lock()

    def source() -> Iterator[int]:
        for n in itertools.count():
            asked.append(n)
            if n == stop_at + 2:
                reader_waiting.set()
                assert interrupted.wait(WAIT)
            yield n

    def first(ctx: Context, record: int) -> int:
        with lock:
            ran.append((record, "a"))
        if record == stop_at:
            for _ in range(stop_at):  # every earlier record has finished
                assert done_b.acquire(timeout=WAIT)
            assert next_in_a.wait(WAIT) and reader_waiting.wait(WAIT)
            coordinator.interrupt()
            assert ctx.cancelled
            interrupted.set()
        elif record > stop_at:
            next_in_a.set()
            assert interrupted.wait(WAIT)
            assert ctx.cancelled
        return record

    def second(ctx: Context, record: int) -> None:
        with lock:
            ran.append((record, "b"))
        done_b.release()

    coordinator.add_step(Step(name="a", job=first))
    coordinator.add_step(Step(name="b", job=second))
    with coordinator:
        results = list(coordinator.run_many(source()))
    assert coordinator.interrupted
    read = stop_at + 3
    assert asked == list(range(read))  # nothing asked of the input after the interruption
    assert [r.index for r in results] == list(range(read))  # one Result per item read
    assert [r.status for r in results] == ["succeeded"] * stop_at + ["cancelled"] * 3
    for result in results[stop_at : stop_at + 2]:  # in flight: stopped before the next step
        assert interrupted_before(result) == "interrupted before step 'b'"
        assert result.steps == {"a": "succeeded", "b": "not_run"}
        assert result.bag.job("a") == result.index
        assert result.errors == []
    not_started = results[-1]  # read, not started
    assert interrupted_before(not_started) == "interrupted before step 'a'"
    assert not_started.steps == {"a": "not_run", "b": "not_run"}
    assert sorted(ran) == sorted(
        [(n, step) for n in range(stop_at) for step in "ab"] + [(stop_at, "a"), (stop_at + 1, "a")]
    )


@pytest.mark.parametrize("ordered", [True, False])
def test_keyboard_interrupt_with_four_workers_gives_every_read_item_one_result(
    ordered: bool,
) -> None:
    source = Source()

    def job(ctx: Context, record: int) -> int:
        if record == 30:
            raise KeyboardInterrupt
        time.sleep(0.001)
        return record

    with Coordinator(workers=4) as coordinator:
        coordinator.add_step(Step(name="a", job=job))
        coordinator.add_step(Step(name="b", job=lambda ctx, record: record))
        results = list(coordinator.run_many(source, ordered=ordered))
    assert coordinator.interrupted
    indices = [r.index for r in results]
    assert sorted(indices) == list(range(source.produced))
    if ordered:
        assert indices == sorted(indices)
    assert source.produced <= 31 + 4 * 4
    by_index: dict[int, Any] = {r.index: r for r in results}
    assert by_index[30].status == "cancelled"
    assert interrupted_before(by_index[30]) == "interrupted during step 'a'"
    for result in results:
        assert result.status in ("succeeded", "cancelled")
        if result.status == "cancelled" and result.index != 30:
            assert (interrupted_before(result) or "").startswith("interrupted before step ")


@pytest.mark.parametrize("workers", [1, 4])
def test_an_interrupted_coordinator_reads_no_input(workers: int) -> None:
    source = Source()
    with Coordinator(workers=workers) as coordinator:
        coordinator.add_step(Step(name="a", job=lambda ctx: None))
        coordinator.interrupt()
        assert list(coordinator.run_many(source)) == []
    assert source.produced == 0
