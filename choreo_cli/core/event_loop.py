"""Worker event loops: epoll with waits that end on time, a leaner run, and a clean close."""

from __future__ import annotations

import contextlib
import select
import selectors
from time import monotonic
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable

T = TypeVar("T")

# select() cannot watch a descriptor numbered FD_SETSIZE or higher (Linux, glibc).
FD_SETSIZE = 1024
# While callbacks are ready, look for I/O at least this often (see PreciseEpollSelector).
POLL_INTERVAL = 0.001

_EPOLL = hasattr(selectors, "EpollSelector")
# Loop runs allowed to end a call's task after an error left the loop (one or two do).
_END_ROUNDS = 10
# How long the tasks a closing loop cancels, and its async generators, get to end (seconds).
CLOSE_GRACE = 1.0


class PreciseEpollSelector(selectors.EpollSelector):
    """An epoll selector whose timed waits end on time, not at the next whole millisecond.

    ``EpollSelector.select`` rounds every timeout up to whole milliseconds (epoll_wait
    takes milliseconds): a 5 ms ``asyncio.sleep`` whose loop reaches the wait 0.3 ms after
    it began waits 5 ms more, not 4.7 (a wait ends up to 1 ms late). Here a timed wait is a select() on the epoll descriptor itself, which
    takes microseconds (an epoll descriptor is readable while any event registered in it
    is ready); the events are then collected by an epoll poll that does not wait. When the
    epoll descriptor is numbered FD_SETSIZE or higher (a process with over a thousand open
    files), select() cannot take it: the wait is then epoll's, rounded up as before.

    A poll that must not wait (asyncio has callbacks ready) is skipped when the previous
    poll returned less than POLL_INTERVAL ago: I/O that became ready in between is seen
    by the next poll, at most POLL_INTERVAL later, and at once when the loop next waits.
    Each poll releases the GIL, and with many worker threads busy getting it back costs
    far more than the poll itself; running a coroutine that awaits one timer takes asyncio
    four polls, three of them with callbacks ready.
    """

    def __init__(self) -> None:
        super().__init__()
        fd = self.fileno()
        self._watch: tuple[int, ...] | None = (fd,) if fd < FD_SETSIZE else None
        self._next_poll = 0.0

    @property
    def precise(self) -> bool:
        """False when the epoll descriptor is too high for select(): waits round up."""
        return self._watch is not None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            ready = super().select(None)
        elif timeout <= 0:
            if monotonic() < self._next_poll:
                return []
            ready = super().select(0)
        elif self._watch is not None:
            ready = super().select(0) if select.select(self._watch, (), (), timeout)[0] else []
        else:
            ready = super().select(timeout)
        self._next_poll = monotonic() + POLL_INTERVAL
        return ready


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: a PreciseEpollSelector one where epoll is, else asyncio's own.

    A loop policy that was set (uvloop's, say) is left to make the loop, as before.
    """
    import asyncio  # here: a pipeline without async callables never imports asyncio

    # The module global, read directly: asyncio.get_event_loop_policy() warns from 3.14.
    policy = getattr(asyncio.events, "_event_loop_policy", None)
    if _EPOLL and (policy is None or type(policy).__module__ == "asyncio.unix_events"):
        return asyncio.SelectorEventLoop(PreciseEpollSelector())
    return asyncio.new_event_loop()


async def _run_then_stop(
    loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T], live: list[bool]
) -> T:
    try:
        return await awaitable
    finally:
        if live:  # else run() has returned: this task must not stop a later run
            loop.stop()


def run(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T]) -> T:
    """``loop.run_until_complete(awaitable)``, one loop iteration shorter.

    run_until_complete stops the loop from a done callback of the task, which takes one
    more loop iteration (and one more poll) after the awaitable has finished; here the
    task stops the loop itself as it finishes. Callbacks still scheduled then (done
    callbacks added to the task, say) run when the loop next runs; run_until_complete
    would have run those in its extra iteration.
    """
    if loop.is_closed():
        raise RuntimeError("Event loop is closed")
    live = [True]
    task = loop.create_task(_run_then_stop(loop, awaitable, live))
    try:
        loop.run_forever()
    except BaseException:
        live.clear()
        if not task.done():
            # A SystemExit or KeyboardInterrupt raised in a callable leaves the loop from
            # inside a task, while this call's task still waits on it: ended now, else it
            # would wake up in a later call and raise the same error there.
            _end(loop, task)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning
        raise
    if not task.done():  # something else stopped the loop
        live.clear()
        raise RuntimeError("Event loop stopped before Future completed.")
    return task.result()


def _end(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and run ``loop`` until it is done (what it raises is dropped: the
    caller is raising the error that left the loop)."""
    task.cancel()
    for _ in range(_END_ROUNDS):
        if task.done():
            return
        loop.stop()  # one loop iteration: what is ready runs, then run_forever returns
        try:
            loop.run_forever()
        except BaseException:
            continue  # the same error, out of the task again


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a worker's loop as ``asyncio.run`` closes its own, from the thread that ran it.

    Tasks a callable left running (``create_task`` without awaiting the task) are
    cancelled and given CLOSE_GRACE seconds to end, and async generators left open are
    finalised: closed bare, the loop would leave "Task was destroyed but it is pending!"
    on stderr when they are collected. Called on a thread that runs another loop (a
    collection inside a callable), the loop is only closed. A running loop raises, as
    ``loop.close()`` does.
    """
    import asyncio

    if loop.is_closed():
        return
    try:
        if not loop.is_running() and asyncio._get_running_loop() is None:
            loop.run_until_complete(_wind_down(loop))
    finally:
        loop.close()


async def _wind_down(loop: asyncio.AbstractEventLoop) -> None:
    import asyncio

    this = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks(loop) if t is not this]
    for task in tasks:
        task.cancel()
    if tasks:
        done, _ = await asyncio.wait(tasks, timeout=CLOSE_GRACE)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                # What asyncio.run says of a task that raised as it was cancelled.
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception while closing a worker's event loop",
                        "exception": task.exception(),
                        "task": task,
                    }
                )
    # An async generator that does not end in time: the loop is closed all the same.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(loop.shutdown_asyncgens(), CLOSE_GRACE)
