"""What signals and a failed output tell a running `choreo run`, and the signal handlers that tell it."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from choreo_cli.executors.base import Executor

T = TypeVar("T")


class _StopReading(BaseException):
    pass


_NOTHING = object()


def interruption_line(signum: int) -> str:
    """The line a signal that stops the run prints when it comes.

    >>> interruption_line(signal.SIGINT)
    'interrupted (SIGINT): no new record starts; records in flight stop before their next step (a second signal ends choreo at once)'
    """
    return (
        f"interrupted ({signal.Signals(signum).name}): no new record starts; records in "
        "flight stop before their next step (a second signal ends choreo at once)"
    )


class RunState:
    """What the signal handlers and the writer tell the run loop, and the input feed they stop.

    ``say(line)`` prints a line for people (the interruption, when it comes): on a thread
    of its own, started here, since a signal handler may have stopped the main thread
    inside a write to the same stream (writing there again would raise), or inside
    ``threading``'s own locks (starting a thread then would wait for ever). ``close()``
    ends that thread.
    """

    def __init__(self, executor: Executor, say: Callable[[str], None] | None = None) -> None:
        self.executor = executor
        self.signal: int | None = None
        self.stop = False
        self.reading = False
        self.say = say
        # Lines to say, and one True per line said; SimpleQueue.put may be called from a
        # signal handler.
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._said: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._asked = 0
        self._sayer: threading.Thread | None = None
        if say is not None:
            sayer = threading.Thread(target=self._say_lines, name="choreo-notices", daemon=True)
            with contextlib.suppress(RuntimeError):  # no thread to be had: said at once
                sayer.start()
                self._sayer = sayer

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT or SIGTERM: the first stops the run, a second ends the process at once."""
        if self.signal is not None:
            # A second signal: exit at once (README "Exit codes"), and take the worker
            # processes down too (they ignore SIGINT and SIGTERM, and would finish their records).
            self.executor.kill_workers()
            os._exit(128 + signum)
        self.signal = signum
        self.announce(interruption_line(signum))
        self.halt(f"interrupted by {signal.Signals(signum).name}")

    def announce(self, line: str) -> None:
        """Have ``say`` print ``line`` now; safe in a signal handler. ``announced`` waits
        until it is out."""
        if self.say is None:
            return
        if self._sayer is None:
            with contextlib.suppress(Exception):  # as well as it goes
                self.say(line)
            return
        self._asked += 1
        self._lines.put(line)

    def announced(self) -> None:
        """Wait until the lines of ``announce`` are out (before the run's last lines)."""
        while self._asked:
            self._asked -= 1
            with contextlib.suppress(queue.Empty):
                self._said.get(timeout=5)

    def close(self) -> None:
        """End the thread that says the lines (after those asked for)."""
        if self._sayer is not None:
            self._lines.put(None)
            self._sayer.join(timeout=5)
            self._sayer = None

    def _say_lines(self) -> None:
        assert self.say is not None
        while True:
            line = self._lines.get()
            if line is None:
                return
            with contextlib.suppress(Exception):  # stderr gone: nothing left to do
                self.say(line)
            self._said.put(True)

    def on_output_failure(self) -> None:
        """The result lines cannot be written any more (a closed pipe, a full disk)."""
        # Called from the writer's thread: set flags only, then wake the main thread with
        # a signal if it is blocked reading an idle input (only a signal handler may raise
        # into it).
        self.stop = True
        self.executor.interrupt("the output failed")
        if self.reading:
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def on_wake(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR1 from ``on_output_failure``: stop a read that may never return."""
        if self.stop and self.reading:
            raise _StopReading

    def halt(self, reason: str) -> None:
        """Stop the run from a signal handler (main thread)."""
        self.stop = True
        self.executor.interrupt(reason)
        if self.reading:
            # The main thread is blocked reading input (an idle pipe): unblock it.
            raise _StopReading

    def feed(self, items: Iterable[T]) -> Iterator[T]:
        """The input items, until the run is told to stop (signal, closed output, fail-fast)."""
        iterator = iter(items)
        while not self.stop:
            item: Any = _NOTHING  # the sentinel tells a read item from none
            self.reading = True
            try:
                item = next(iterator)
            except StopIteration:
                return
            except _StopReading:
                if item is _NOTHING:
                    return
                # The signal came just after the item was read: it still gets its
                # (cancelled) result, as every record read does.
            finally:
                self.reading = False
            yield item


@contextlib.contextmanager
def handle_signals(state: RunState) -> Iterator[None]:
    """SIGINT and SIGTERM stop the run through ``state`` (SIGUSR1 wakes it), until the
    block ends; the previous handlers are put back then."""
    previous = {sig: signal.signal(sig, state.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, state.on_wake)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        state.close()
