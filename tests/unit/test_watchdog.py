"""Timeouts without a thread per call (core/watchdog.py): a timed call runs inline, the
watchdog gives it up at its deadline, the record fails then and a fresh worker goes on;
an ``async def`` callable that blocks its loop is given up on the same way."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from choreo_cli import Context, Coordinator, Result, Skip, Step
from choreo_cli.core.context import DataBag, _RunFlags
from choreo_cli.core.resources import ResourceSpec
from choreo_cli.core.retry import RetryPolicy
from choreo_cli.core.watchdog import DeadlineSlot, Timed, Watchdog, resolution_for
from choreo_cli.jsonl.line_runner import run_lines

RUNNERS = ["compiled", "interpreted"]


@pytest.fixture(params=RUNNERS)
def runner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both runners: the generated code and the reference loop (CHOREO_RUNNER)."""
    monkeypatch.setenv("CHOREO_RUNNER", request.param)
    return str(request.param)


class Release:
    """What a stuck callable waits for: set at the end of the test, or 5 s after it began
    (so that a run without the watchdog ends too, late)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._end = time.monotonic() + 5

    def wait(self) -> None:
        self._event.wait(max(0.0, self._end - time.monotonic()))

    def is_set(self) -> bool:
        return self._event.is_set() or time.monotonic() >= self._end

    def set(self) -> None:
        self._event.set()


@pytest.fixture
def release() -> Iterator[Release]:
    """Set at the end of the test: callables left stuck in the background end then."""
    event = Release()
    yield event
    event.set()


def _coordinator(*steps: Step, workers: int = 1, timings: bool = True) -> Coordinator:
    coordinator = Coordinator(workers=workers, timings=timings)
    for step in steps:
        coordinator.add_step(step)
    return coordinator


def _lines(coordinator: Coordinator, batches: list[list[bytes]]) -> tuple[list[Any], list[int]]:
    """What run_lines writes (clean lines as (index, line), other records as Results)
    and the counts it yields."""
    out: list[Any] = []

    def put(line: bytes) -> None:
        index, number = line.split()
        out.append((int(index), int(number)))

    counts = list(run_lines(coordinator, batches, clean_line=b"%d %d", put=put, emit=out.append))
    return out, counts


def _described(out: list[Any]) -> list[Any]:
    return [
        item
        if isinstance(item, tuple)
        else (item.index, item.line, item.status, item.error and item.error.type)
        for item in out
    ]


def _trivial(ctx: Context, record: Any) -> int:
    return 1


def _nothing(ctx: Context, record: Any) -> None:
    return None


def _w1(timeout: float | None) -> list[Step]:
    """The W1 pipeline (bench/bench_run.py): two steps, trivial prechecks and jobs."""
    return [
        Step(name="create statement", precheck=_nothing, job=_trivial, timeout=timeout),
        Step(name="create statement line", precheck=_nothing, job=_trivial, timeout=timeout),
    ]


# -- what a timeout costs -----------------------------------------------------------------


def test_twenty_thousand_timed_records_run_in_well_under_a_second() -> None:
    # A thread per call made it 3.4 s; the bench gives the exact figures.
    coordinator = _coordinator(*_w1(60), timings=False)
    data = [orjson.dumps({"id": n}) for n in range(20_000)]
    batches = [data[n : n + 1024] for n in range(0, len(data), 1024)]
    started = time.perf_counter()
    out, counts = _lines(coordinator, batches)
    elapsed = time.perf_counter() - started
    coordinator.close()
    assert sum(counts) == 20_000 and len(out) == 20_000
    assert elapsed < 1.0, elapsed


@pytest.mark.parametrize(
    ("how", "workers"), [("run_many", 1), ("run_many", 4), ("run_lines", 1), ("run", 1)]
)
def test_a_timed_call_starts_no_thread(
    how: str, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator = _coordinator(*_w1(30), workers=workers)
    coordinator.run(0)  # the threads of the coordinator itself start before counting
    list(coordinator.run_many(range(8)))
    started: list[str] = []
    start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    if how == "run_many":
        results = list(coordinator.run_many(range(300)))
    elif how == "run":
        results = [coordinator.run(n) for n in range(300)]
    else:
        out, _ = _lines(coordinator, [[b"1"] * 300])
        results = [r for r in out if isinstance(r, Result)]
    monkeypatch.undo()
    coordinator.close()
    assert all(r.status == "succeeded" for r in results)
    assert started == [], started  # the watchdog may rest and start again: at most that
    # (a thread per call started 1,200 here)


# -- the deadline -------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 4])
def test_a_sync_job_that_never_returns_fails_at_the_deadline(
    workers: int, runner: str, release: Release
) -> None:
    def job(ctx: Context, record: int) -> int:
        if record == 2:
            release.wait()
        return record

    coordinator = _coordinator(
        Step(name="a", job=job, timeout=0.3), Step(name="b", job=_trivial), workers=workers
    )
    started = time.monotonic()
    results = list(coordinator.run_many(range(8)))
    elapsed = time.monotonic() - started
    coordinator.close()
    assert 0.3 <= elapsed < 2, elapsed
    assert [r.index for r in results] == list(range(8))
    assert [r.status for r in results] == ["succeeded"] * 2 + ["failed"] + ["succeeded"] * 5
    failed = results[2]
    assert failed.steps == {"a": "failed", "b": "not_run"}
    assert failed.error is not None and failed.error.type == "StepTimeout"
    assert failed.error.message.endswith("ran past the step's timeout of 0.3 s")
    assert [r.bag.job("a") for r in results] == [0, 1, None, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("workers", [1, 3])
def test_an_async_job_that_blocks_its_loop_fails_at_the_deadline(workers: int) -> None:
    async def job(ctx: Context, record: int) -> int:
        if record == 1:
            time.sleep(3)  # a blocking call in an async def: the loop cannot cancel it
        await asyncio.sleep(0)
        return record

    coordinator = _coordinator(Step(name="a", job=job, timeout=0.5), workers=workers)
    started = time.monotonic()
    results = list(coordinator.run_many(range(5)))
    elapsed = time.monotonic() - started
    coordinator.close()
    assert elapsed < 1.5, elapsed  # the record succeeded after 3 s before
    assert [r.status for r in results] == ["succeeded", "failed"] + ["succeeded"] * 3
    assert results[1].error is not None and results[1].error.type == "StepTimeout"
    assert [r.bag.job("a") for r in results] == [0, None, 2, 3, 4]


@pytest.mark.parametrize("workers", [1, 3])
def test_an_async_job_that_never_awaits_fails_at_the_deadline(
    workers: int, release: Release
) -> None:
    async def job(ctx: Context, record: int) -> int:
        if record == 1:
            while not release.is_set():  # never awaits: the loop never comes back
                pass
        await asyncio.sleep(0)
        return record

    coordinator = _coordinator(Step(name="a", job=job, timeout=0.3), workers=workers)
    started = time.monotonic()
    results = list(coordinator.run_many(range(4)))
    elapsed = time.monotonic() - started
    release.set()
    coordinator.close()
    assert elapsed < 2, elapsed  # the run never ended before
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded", "succeeded"]


def test_an_async_job_that_awaits_is_still_cancelled_by_its_loop() -> None:
    cancelled: list[int] = []

    async def job(ctx: Context, record: int) -> int:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(record)
            raise
        return record

    coordinator = _coordinator(Step(name="a", job=job, timeout=0.2))
    results = list(coordinator.run_many(range(3)))
    coordinator.close()
    assert [r.error and r.error.type for r in results] == ["StepTimeout"] * 3
    assert cancelled == [0, 1, 2]  # the loop's timer, not the watchdog, ended each call


@pytest.mark.parametrize("workers", [1, 4])
def test_calls_within_the_timeout_are_never_given_up(workers: int, runner: str) -> None:
    # Many short calls of the same step, back to back, last far longer than the timeout:
    # the watchdog must tell each call from the next (a call's own margin is wide, so that
    # a loaded machine cannot make one of them late).
    def job(ctx: Context, record: int) -> int:
        time.sleep(0.001)
        return record

    coordinator = _coordinator(
        Step(name="a", precheck=_nothing, job=job, timeout=0.3), workers=workers
    )
    count = 600 * workers  # each worker's calls last 0.6 s or more
    started = time.monotonic()
    results = list(coordinator.run_many(range(count)))
    assert [r.status for r in results] == ["succeeded"] * count
    if workers == 1:
        out, _ = _lines(coordinator, [[b"1"] * 300, [b"2"] * 300])
        assert out == [(n, n + 1) for n in range(600)]
    coordinator.close()
    assert time.monotonic() - started > 0.6  # the same step's calls outlast the timeout


def test_a_call_is_never_given_up_before_its_deadline() -> None:
    def job(ctx: Context, record: float) -> float:
        time.sleep(record)
        return record

    coordinator = _coordinator(Step(name="a", job=job, timeout=0.4))
    results = list(coordinator.run_many([0.3, 0.35, 0.3]))
    coordinator.close()
    assert [r.status for r in results] == ["succeeded"] * 3


# -- what the failed record keeps, and what goes on ---------------------------------------


def _skip_then_hang(release: Release) -> list[Step]:
    def skipped(ctx: Context, record: int) -> None:
        raise Skip("done before", data=record)

    def hang(ctx: Context, record: int) -> int:
        if record % 3 == 1:
            release.wait()
        return record

    return [
        Step(name="first", precheck=skipped, job=_trivial, timeout=5),
        Step(name="second", job=hang, timeout=0.3),
        Step(name="third", job=_trivial),
    ]


@pytest.mark.parametrize("how", ["run", "run_many", "pool", "run_lines"])
def test_the_failed_record_keeps_what_happened_before_the_deadline(
    how: str, runner: str, release: Release
) -> None:
    coordinator = _coordinator(*_skip_then_hang(release), workers=4 if how == "pool" else 1)
    if how == "run":
        results = [coordinator.run(n, index=n) for n in range(3)]
    elif how == "run_lines":
        results, _ = _lines(coordinator, [[b"0", b"1", b"2"]])
    else:
        results = list(coordinator.run_many(range(3)))
    coordinator.close()
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded"]
    failed = results[1]
    assert failed.index == 1
    assert failed.steps == {"first": "skipped", "second": "failed", "third": "not_run"}
    assert [(e.step, e.phase, e.type) for e in failed.errors] == [
        ("first", "precheck", "Skip"),
        ("second", "job", "StepTimeout"),
    ]
    assert failed.bag.precheck("first") == 1  # the Skip's data
    assert results[2].bag.precheck("first") == 2 and results[2].errors[0].type == "Skip"


@pytest.mark.parametrize("how", ["run", "pool", "run_lines"])
def test_a_retried_job_goes_on_after_a_timed_out_attempt(how: str, runner: str) -> None:
    calls: dict[int, list[bool]] = {}
    lock = threading.Lock()

    def job(ctx: Context, record: int) -> int:
        with lock:
            calls.setdefault(record, []).append(ctx.cancelled)
            attempt = len(calls[record])
        if record == 1 and attempt < 3:
            time.sleep(1)  # the first two attempts time out
        return record * 10

    policy = RetryPolicy(attempts=3, on=(Exception,))
    coordinator = _coordinator(
        Step(name="a", job=job, timeout=0.2, retry=policy),
        Step(name="b", job=lambda ctx, record: ctx.bag.job("a") + 1),
        workers=4 if how == "pool" else 1,
    )
    if how == "run":
        results = [coordinator.run(n, index=n) for n in range(3)]
    elif how == "pool":
        results = list(coordinator.run_many(range(3)))
    else:
        out, _ = _lines(coordinator, [[b"0", b"1", b"2"]])
        results = out  # every record of a retried job has attempts: none is a clean line
    coordinator.close()
    assert [r.status for r in results] == ["succeeded"] * 3
    assert results[1].attempts == {"a": 3}
    assert results[1].errors == []  # the timed-out attempts do not count
    assert [r.bag.job("b") for r in results] == [1, 11, 21]
    assert calls[1][:3] == [False, False, False]  # each attempt a context of its own


def test_run_lines_keeps_every_line_in_order_across_stalls(runner: str, release: Release) -> None:
    def job(ctx: Context, record: dict[str, Any]) -> Any:
        if record.get("hang"):
            release.wait()
        return record["id"]

    coordinator = _coordinator(Step(name="a", job=job, timeout=0.2), timings=False)
    batches = [
        [b'{"id": 0}', b"", b'{"id": 1, "hang": true}', b'{"id": 2}'],
        [b"not json", b'{"id": 4, "hang": true}'],
        [b'{"id": 5, "hang": true}', b"  ", b'{"id": 6}', b'{"id": 7, "hang": true}'],
    ]
    out, counts = _lines(coordinator, batches)
    coordinator.close()
    assert _described(out) == [
        (0, 1),
        (1, 3, "failed", "StepTimeout"),
        (2, 4),
        (3, 5, "invalid", "JSONDecodeError"),
        (4, 6, "failed", "StepTimeout"),
        (5, 7, "failed", "StepTimeout"),
        (6, 9),
        (7, 10, "failed", "StepTimeout"),
    ]
    assert counts == [2, 0, 1]


def test_an_emit_that_stops_the_run_stops_it_after_a_stall(release: Release) -> None:
    def job(ctx: Context, record: int) -> int:
        if record == 1:
            release.wait()
        return record

    coordinator = _coordinator(Step(name="a", job=job, timeout=0.2))
    out: list[Any] = []
    counts = list(
        run_lines(
            coordinator,
            [[b"0", b"1", b"2"], [b"3"]],
            clean_line=b"%d %d",
            put=out.append,
            emit=lambda result: out.append(result.status) or True,  # fail-fast
        )
    )
    coordinator.close()
    assert out == [b"0 1", "failed"]
    assert counts == [1]


# -- the abandoned thread and the fresh one -----------------------------------------------


def test_the_abandoned_callable_runs_on_and_its_return_is_discarded(runner: str) -> None:
    seen: list[tuple[int, bool, bool]] = []
    done = threading.Event()

    def job(ctx: Context, record: int) -> int:
        before = ctx.cancelled
        if record == 1:
            time.sleep(0.5)
            ctx.bag.set_job("late", "changed after the deadline")
        seen.append((record, before, ctx.cancelled))
        if record == 1:
            done.set()
        return record

    coordinator = _coordinator(Step(name="a", job=job, timeout=0.15))
    results = list(coordinator.run_many(range(3)))
    assert done.wait(5)
    time.sleep(0.05)
    coordinator.close()
    assert sorted(seen) == [(0, False, False), (1, False, True), (2, False, False)]
    assert results[1].status == "failed" and results[1].bag.as_dict() == {"precheck": {}, "job": {}}
    assert [r.bag.job("a") for r in results] == [0, None, 2]


def test_a_fresh_worker_builds_its_own_resources_and_the_stuck_ones_are_left_alone(
    release: Release,
) -> None:
    events: list[tuple[str, int]] = []

    def conn() -> Iterator[int]:
        number = threading.get_ident()
        events.append(("open", number))
        yield number
        events.append(("close", number))

    def job(ctx: Context, record: int) -> int:
        if record == 1:
            release.wait()
        value: int = ctx.resources.conn
        assert value == threading.get_ident()  # a worker resource of this very thread
        return value

    coordinator = Coordinator(resources={"conn": ResourceSpec("conn", conn, scope="worker")})
    coordinator.add_step(Step(name="a", job=job, timeout=0.2))
    with coordinator:
        results = list(coordinator.run_many(range(3)))
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded"]
    stuck = results[0].bag.job("a")
    fresh = results[2].bag.job("a")
    assert stuck != fresh
    # The stuck thread's resource is not closed under its running call; the fresh one's is.
    assert ("close", fresh) in events and ("close", stuck) not in events
    release.set()
    deadline = time.monotonic() + 5
    while ("close", stuck) not in events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ("close", stuck) in events  # closed by its own thread once the call came back


def test_ctrl_c_while_a_record_runs_on_the_carrier_interrupts_the_run() -> None:
    def job(ctx: Context, record: int) -> int:
        if record == 1:
            time.sleep(0.4)
        return record

    coordinator = _coordinator(Step(name="a", job=job, timeout=5), Step(name="b", job=_trivial))
    main = threading.main_thread().ident
    assert main is not None
    threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT)).start()
    results = list(coordinator.run_many(range(5)))
    coordinator.close()
    # As if the callable had raised KeyboardInterrupt: the record stops before its next
    # step, no later record runs.
    assert [r.status for r in results] == ["succeeded", "cancelled"]
    assert results[1].error is not None and results[1].error.type == "Interrupted"
    assert coordinator.interrupted


# -- the watchdog itself ------------------------------------------------------------------


def test_the_resolution_follows_the_shortest_timeout() -> None:
    assert resolution_for([]) == 0.05
    assert resolution_for([60, 0.2]) == pytest.approx(0.02)
    assert resolution_for([0.001]) == 0.002


class _Worker:
    """What a deadline slot reads of a worker."""

    def __init__(self, index: int, line: int | None) -> None:
        self.ctx = Context({}, {}, DataBag(), None, index, line, _RunFlags())


def test_a_slot_without_an_owner_is_never_given_up() -> None:
    slot = DeadlineSlot(_Worker(0, None))
    watchdog = Watchdog(resolution=0.005)
    slot.call = Timed(0, "job", None, 0.01)  # type: ignore[arg-type]
    watchdog.watch(slot)
    time.sleep(0.1)
    watchdog.unwatch(slot)
    assert slot.lost is None


def test_the_watchdog_gives_up_a_call_once_and_tells_its_owner() -> None:
    worker = _Worker(7, 8)
    slot = DeadlineSlot(worker)
    stuck: list[Any] = []
    slot.on_stuck = stuck.append
    watchdog = Watchdog(resolution=0.005)
    timed = Timed(0, "precheck", None, 0.05)  # type: ignore[arg-type]
    slot.call = timed
    watchdog.watch(slot)
    started = time.monotonic()
    while not stuck and time.monotonic() - started < 2:
        time.sleep(0.005)
    assert len(stuck) == 1 and stuck[0].timed is timed
    assert (stuck[0].index, stuck[0].line) == (7, 8)
    assert 0.05 <= time.monotonic() - started < 1
    assert worker.ctx.cancelled  # the callable is told
    time.sleep(0.05)
    assert len(stuck) == 1
