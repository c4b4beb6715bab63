"""The worker event loops (choreo_cli/event_loop.py): precise timed waits, prompt I/O, run()."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import selectors
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from choreo_cli import Context, Coordinator, Step
from choreo_cli.core import event_loop
from choreo_cli.core.event_loop import PreciseEpollSelector, new_event_loop, run
from choreo_cli.core.workers import Worker

pytestmark = pytest.mark.skipif(
    not hasattr(selectors, "EpollSelector"), reason="PreciseEpollSelector needs epoll (Linux)"
)

Loop = asyncio.AbstractEventLoop


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def _selector(loop: Loop) -> selectors.BaseSelector:
    selector: selectors.BaseSelector = loop._selector  # type: ignore[attr-defined]
    return selector


def _sleep_seconds(loop: Loop, delay: float) -> float:
    async def nap() -> float:
        started = time.perf_counter()
        await asyncio.sleep(delay)
        return time.perf_counter() - started

    return run(loop, nap())


def _recv_after(loop: Loop, delay: float, *, timeout: float | None) -> tuple[bytes, float]:
    """Wait on a socket that another thread writes to after ``delay`` s: (data, seconds)."""
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        sender = threading.Timer(delay, b.send, (b"x",))

        async def receive() -> tuple[bytes, float]:
            started = time.perf_counter()
            sender.start()
            if timeout is None:
                data = await loop.sock_recv(a, 1)
            else:
                data = await asyncio.wait_for(loop.sock_recv(a, 1), timeout)
            return data, time.perf_counter() - started

        try:
            return run(loop, receive())
        finally:
            sender.join()


# -- timed waits ----------------------------------------------------------------------------


def test_new_event_loop_uses_the_precise_selector(loop: Loop) -> None:
    selector = _selector(loop)
    assert isinstance(selector, PreciseEpollSelector)
    assert selector.precise


def test_a_timed_wait_is_not_rounded_up_to_whole_milliseconds(loop: Loop) -> None:
    # 2.5 ms: asyncio's EpollSelector waits ceil(2.49...) = 3 ms. Both loops are timed
    # turn about, so a busy machine slows both alike.
    stock = asyncio.SelectorEventLoop(selectors.EpollSelector())
    delay = 0.0025
    precise: list[float] = []
    rounded: list[float] = []
    try:
        for _ in range(40):
            precise.append(_sleep_seconds(loop, delay))
            rounded.append(stock.run_until_complete(_timed_sleep(delay)))
    finally:
        stock.close()
    assert min(precise) >= delay  # never early
    assert statistics.median(precise) < statistics.median(rounded) - 0.0002, (
        statistics.median(precise),
        statistics.median(rounded),
    )


async def _timed_sleep(delay: float) -> float:
    started = time.perf_counter()
    await asyncio.sleep(delay)
    return time.perf_counter() - started


def test_a_five_ms_sleep_lasts_about_five_ms(loop: Loop) -> None:
    durations = [_sleep_seconds(loop, 0.005) for _ in range(40)]
    assert min(durations) >= 0.005
    # Generous: a wake-up on a busy shared machine can be late by a scheduler tick.
    assert statistics.median(durations) < 0.008, durations


def test_waiting_does_not_spin(loop: Loop) -> None:
    started = time.thread_time()
    _sleep_seconds(loop, 0.2)
    assert time.thread_time() - started < 0.05


def test_a_timeout_of_wait_for_is_honoured(loop: Loop) -> None:
    async def too_slow() -> None:
        await asyncio.wait_for(asyncio.sleep(10), 0.05)

    started = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        run(loop, too_slow())
    assert 0.05 <= time.perf_counter() - started < 2


# -- I/O ------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["untimed wait", "timed wait"])
def test_a_ready_socket_wakes_the_loop_at_once(loop: Loop, timeout: float | None) -> None:
    data, seconds = _recv_after(loop, 0.05, timeout=timeout)
    assert data == b"x"
    assert seconds < 1  # woken by the socket, not by the 5 s timeout


def test_io_is_seen_while_callbacks_keep_the_loop_busy(loop: Loop) -> None:
    # A coroutine that never lets the loop wait: every poll is a no-wait one, some of
    # which are skipped; the socket's data must still arrive.
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)

        async def busy_until_received() -> int:
            reader = asyncio.ensure_future(loop.sock_recv(a, 1))
            await asyncio.sleep(0)
            b.send(b"x")
            turns = 0
            deadline = time.monotonic() + 5
            while not reader.done() and time.monotonic() < deadline:
                turns += 1
                await asyncio.sleep(0)
            assert reader.result() == b"x"
            return turns

        started = time.perf_counter()
        run(loop, busy_until_received())
        assert time.perf_counter() - started < 1


def test_a_subprocess_runs_on_the_loop(loop: Loop) -> None:
    async def child() -> bytes:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print(42)", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        return out

    assert run(loop, child()).strip() == b"42"


# -- descriptors too high for select() -------------------------------------------------------


def _check_loop_works(loop: Loop) -> None:
    assert _sleep_seconds(loop, 0.005) >= 0.005
    for timeout in (None, 5.0):
        data, seconds = _recv_after(loop, 0.02, timeout=timeout)
        assert data == b"x"
        assert seconds < 1


def test_fallback_when_select_cannot_take_the_epoll_descriptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_loop, "FD_SETSIZE", 0)  # every descriptor is "too high"
    loop = new_event_loop()
    try:
        assert not _selector(loop).precise  # type: ignore[attr-defined]
        _check_loop_works(loop)
    finally:
        loop.close()


def test_fallback_with_a_real_descriptor_above_fd_setsize() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = event_loop.FD_SETSIZE + 64
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    spare: list[int] = []
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        spare.append(null)
        while spare[-1] < event_loop.FD_SETSIZE:  # every lower descriptor is taken
            spare.append(os.dup(null))
        loop = new_event_loop()
        try:
            selector = _selector(loop)
            assert selector.fileno() >= event_loop.FD_SETSIZE
            assert not selector.precise  # type: ignore[attr-defined]
            _check_loop_works(loop)
        finally:
            loop.close()
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- run() ----------------------------------------------------------------------------------


def test_run_returns_the_result_and_raises_the_error(loop: Loop) -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 7

    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("no")

    assert run(loop, value()) == 7
    with pytest.raises(ValueError, match="no"):
        run(loop, fails())
    assert run(loop, value()) == 7
    assert not loop.is_running()


@pytest.mark.parametrize("exc_type", [SystemExit, GeneratorExit, KeyboardInterrupt])
def test_run_lets_base_exceptions_through_and_the_loop_stays_usable(
    loop: Loop, exc_type: type[BaseException]
) -> None:
    async def leaves() -> None:
        await asyncio.sleep(0)
        raise exc_type("bye")

    with pytest.raises(exc_type):
        run(loop, leaves())
    assert _sleep_seconds(loop, 0.001) >= 0.001


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_an_error_out_of_a_wait_for_does_not_come_back_in_the_next_run(
    loop: Loop, exc_type: type[BaseException]
) -> None:
    """A step's timeout wraps its call in wait_for: the error leaves the loop from the
    inner task while the call's own task still waits; it must not raise again later."""
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))

    async def leaves() -> None:
        await asyncio.sleep(0)
        raise exc_type(3)

    async def value() -> int:
        await asyncio.sleep(0.001)
        return 7

    with pytest.raises(exc_type):
        run(loop, asyncio.wait_for(leaves(), 5))
    assert run(loop, value()) == 7
    assert run(loop, asyncio.wait_for(value(), 5)) == 7
    gc.collect()
    assert unhandled == []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_system_exit_in_an_async_job_with_a_timeout_fails_only_its_record(
    workers: int,
) -> None:
    async def job(ctx: Context, record: int) -> int:
        await asyncio.sleep(0)
        if record == 1:
            sys.exit(3)
        return record

    coordinator = Coordinator(workers=workers)
    coordinator.add_step(Step(name="work", job=job, timeout=5))
    with coordinator:
        results = list(coordinator.run_many(range(4)))
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded", "succeeded"]
    assert results[1].error is not None and results[1].error.type == "SystemExit"


def test_a_task_left_behind_by_an_interrupted_run_does_not_stop_a_later_run(
    loop: Loop,
) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    async def slow(value: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return value

    loop.call_later(0.01, interrupt)
    left_behind = slow(1, 0.05)
    with pytest.raises(KeyboardInterrupt):
        run(loop, left_behind)  # its task is still waiting when the run ends
    # The left-behind task finishes during this run; that must not end this run.
    assert run(loop, slow(2, 0.2)) == 2


def test_run_refuses_a_closed_loop() -> None:
    loop = new_event_loop()
    loop.close()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        run(loop, coro)
    coro.close()


def test_a_loop_policy_that_was_set_makes_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Loop] = []

    class Policy:  # duck-typed: the policy classes warn on use from Python 3.14
        def new_event_loop(self) -> Loop:
            made.append(asyncio.SelectorEventLoop(selectors.PollSelector()))
            return made[-1]

    monkeypatch.setattr(asyncio.events, "_event_loop_policy", Policy())
    loop = new_event_loop()
    try:
        assert made == [loop]
        assert run(loop, _timed_sleep(0.001)) >= 0.001
    finally:
        loop.close()


# -- in the coordinator -----------------------------------------------------------------------


def _coordinator(job: Callable[..., Any], workers: int) -> Coordinator:
    coordinator = Coordinator(workers=workers)
    coordinator.add_step(Step(name="a", job=job))
    return coordinator


@pytest.mark.parametrize("workers", [1, 4])
def test_async_jobs_run_on_worker_loops_with_sockets_and_subprocesses(workers: int) -> None:
    async def job(ctx: Context, record: int) -> tuple[int, str, bytes, str]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            loop.call_later(0.002, b.send, b"%d" % record)
            data = await asyncio.wait_for(loop.sock_recv(a, 8), 5)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"print({record} * 2)", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        return record, type(_selector(loop)).__name__, data, out.decode().strip()

    with _coordinator(job, workers) as coordinator:
        results = list(coordinator.run_many(range(6)))
    assert [r.status for r in results] == ["succeeded"] * 6
    assert [r.bag.job("a") for r in results] == [
        (n, "PreciseEpollSelector", b"%d" % n, str(n * 2)) for n in range(6)
    ]


@pytest.mark.parametrize("is_async", [True, False])
def test_worker_threads_make_their_loops_before_the_first_record(
    monkeypatch: pytest.MonkeyPatch, is_async: bool
) -> None:
    workers: list[Worker] = []
    new_worker = Coordinator.new_worker

    def recording(self: Coordinator) -> Worker:
        workers.append(new_worker(self))
        return workers[-1]

    monkeypatch.setattr(Coordinator, "new_worker", recording)

    async def job(ctx: Context, record: int) -> int:
        await asyncio.sleep(0)
        return record

    def plain(ctx: Context, record: int) -> int:
        return record

    with _coordinator(job if is_async else plain, 4) as coordinator:
        coordinator.open(prebuild_workers=True)
        assert len(workers) == 4
        assert all((w.loop is not None) is is_async for w in workers)
        assert [r.bag.job("a") for r in coordinator.run_many(range(8))] == list(range(8))
    assert all(w.loop is None for w in workers)  # closed with the coordinator


def test_close_loop_cancels_the_tasks_a_callable_left_and_ends_async_generators() -> None:
    loop = new_event_loop()
    ended: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            ended.append("task")

    async def numbers() -> Any:
        try:
            yield 1
            yield 2
        finally:
            ended.append("generator")

    async def job() -> int:
        loop.create_task(forever())  # never awaited
        async for n in numbers():
            return n  # the generator is left open
        return 0

    assert run(loop, job()) == 1
    left = asyncio.all_tasks(loop)
    event_loop.close_loop(loop)
    assert loop.is_closed()
    assert sorted(ended) == ["generator", "task"]
    assert all(task.cancelled() for task in left)
    event_loop.close_loop(loop)  # closing again does nothing


def test_close_loop_gives_up_on_a_task_that_ignores_its_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_loop, "CLOSE_GRACE", 0.05)
    loop = new_event_loop()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                continue

    async def job() -> None:
        loop.create_task(stubborn())
        await asyncio.sleep(0)

    run(loop, job())
    (left,) = asyncio.all_tasks(loop)
    started = time.monotonic()
    event_loop.close_loop(loop)
    assert time.monotonic() - started < 2
    assert loop.is_closed()
    left._log_destroy_pending = False  # type: ignore[attr-defined]  # no warning at collection


def test_close_loop_inside_another_loop_only_closes_it() -> None:
    loop = new_event_loop()

    async def nothing() -> None:
        await asyncio.sleep(0)

    run(loop, nothing())

    async def closing() -> None:
        event_loop.close_loop(loop)  # a collection inside a callable can do this

    other = new_event_loop()
    try:
        run(other, closing())
    finally:
        other.close()
    assert loop.is_closed()


def test_a_worker_loop_is_closed_by_its_thread_not_under_it() -> None:
    """The finalizer of a worker left at exit must not close a loop another thread runs."""
    owner_ready = threading.Event()
    release = threading.Event()
    holder: list[Loop] = []

    def own() -> None:
        loop = new_event_loop()
        holder.append(loop)
        owner_ready.set()
        release.wait(5)
        loop.close()

    thread = threading.Thread(target=own)
    thread.start()
    try:
        owner_ready.wait(5)
        from choreo_cli.core.workers import _close_loop

        _close_loop(holder[0], thread)  # the owner lives: left to it
        assert not holder[0].is_closed()
    finally:
        release.set()
        thread.join(5)
    assert holder[0].is_closed()
