"""Limits on calls: token buckets (``RateLimit``) and concurrency limits (``ConcurrencyLimit``).

A step's callable names the limits it waits for before each call (each attempt of a
retried job); a ``Gate`` holds them in one fixed order (by name), so two calls that need
the same limits can never each hold one and wait for the other. A limit is shared by every
call that names it, on any worker thread and on any event loop: sync callers block their
thread, async callers await (the loop goes on with other records). The wait never counts
toward a call's timeout, and ends at once when the run is interrupted.

>>> bucket = RateLimit("crm_api", rate=20.0, burst=5)
>>> gate = Gate((bucket,))
>>> gate.enter(lambda seconds: False)  # a wait that is never interrupted
>>> gate.leave()
>>> bucket.waits
0
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Awaitable, Callable, Sequence
from time import monotonic
from typing import Any

Clock = Callable[[], float]
# Sleep up to the given seconds; True (at once) if the run is interrupted meanwhile.
Sleep = Callable[[float], bool]
ASleep = Callable[[float], Awaitable[bool]]

# How often a waiter for a concurrency slot looks whether the run was interrupted.
POLL = 0.05

UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}


class LimitWaitInterrupted(Exception):
    """The run was interrupted while a call waited for a limit."""

    def __init__(self, name: str) -> None:
        super().__init__(f"interrupted while waiting for limit {name!r}")
        self.name = name


def parse_rate(text: str) -> float:
    """Calls per second from ``N/s``, ``N/min`` or ``N/h``; raises ValueError when it is not
    a positive rate.

    >>> parse_rate("20/s"), parse_rate("30/min"), parse_rate("1.5/h") * 3600
    (20.0, 0.5, 1.5)
    """
    count, sep, unit = text.strip().partition("/")
    per = UNITS.get(unit.strip())
    try:
        number = float(count.strip())
    except ValueError:
        number = float("nan")
    if not sep or per is None or not number == number or count.strip().lower() in ("inf", "nan"):
        raise ValueError(f"{text!r} is not a rate — write N/s, N/min or N/h, e.g. 20/s")
    if not number > 0 or number == float("inf"):
        raise ValueError(f"rate {text!r} must be more than 0 calls, e.g. 20/s")
    return number / per


def format_rate(per_second: float) -> str:
    """A rate written back as in a pipeline file, in the unit that gives a readable number.

    >>> format_rate(20.0), format_rate(0.5), format_rate(1 / 3600)
    ('20/s', '30/min', '1/h')
    """
    for unit, seconds in (("s", 1.0), ("min", 60.0), ("h", 3600.0)):
        number = per_second * seconds
        if number >= 1 or unit == "h":
            return f"{number:.6g}/{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


class Limit:
    """What every limit has: a name, its share of the whole, and its wait counters."""

    name: str
    # How many workers (processes) share this limit equally: 1 is the whole limit.
    workers: int

    def __init__(self, name: str, *, workers: int = 1, clock: Clock = monotonic) -> None:
        if workers < 1:
            raise ValueError(f"limit {name!r}: workers must be at least 1, not {workers}")
        self.name = name
        self.workers = workers
        self._clock = clock
        self._lock = threading.Lock()
        self.waits = 0
        self.wait_seconds = 0.0

    def _waited(self, seconds: float) -> None:
        with self._lock:
            self.waits += 1
            self.wait_seconds += seconds

    def share(self) -> str | int:
        """What this worker's share is, as a pipeline file writes it (``25/s``, ``2``)."""
        raise NotImplementedError

    def enter(self, sleep: Sleep) -> None:
        """Wait (blocking the thread) until a call may start; raises LimitWaitInterrupted."""
        raise NotImplementedError

    async def aenter(self, sleep: ASleep) -> None:
        """``enter`` for a coroutine: awaits, the loop goes on meanwhile."""
        raise NotImplementedError

    def leave(self) -> None:
        """The call that entered has ended."""

    #: True when ``leave`` gives something back (a concurrency slot); a rate limit's call
    #: holds nothing once it started.
    holds = False


class RateLimit(Limit):
    """A token bucket: ``rate`` calls per second on average, ``burst`` of them at once.

    A call reserves the next token when it asks (first come, first served): in any span
    of T seconds, at most ``burst + rate * T`` calls start. ``workers``: the bucket is
    this worker's equal share of one shared by that many processes (rate and burst
    divided; a burst of at least 1, or no call could ever start).

    Examples:
        >>> clock = iter([0.0, 0.0, 0.0]).__next__
        >>> bucket = RateLimit("api", rate=2.0, burst=1, clock=clock)
        >>> bucket.reserve(), bucket.reserve()
        (0.0, 0.5)
    """

    def __init__(
        self,
        name: str,
        *,
        rate: float,
        burst: float = 1,
        workers: int = 1,
        clock: Clock = monotonic,
    ) -> None:
        super().__init__(name, workers=workers, clock=clock)
        if not rate > 0:
            raise ValueError(f"limit {name!r}: rate must be more than 0, not {rate!r}")
        if not burst >= 1:
            raise ValueError(f"limit {name!r}: burst must be at least 1, not {burst!r}")
        self.total_rate = float(rate)
        self.total_burst = float(burst)
        self.rate = self.total_rate / workers
        self.burst = max(1.0, self.total_burst / workers)
        self._tokens = self.burst
        self._stamp = clock()

    def share(self) -> str:
        return format_rate(self.rate)

    def reserve(self) -> float:
        """Take the next token: the clock time at which the call may start (now, or later
        when the bucket is empty: the token is then owed, and later calls queue behind)."""
        with self._lock:
            now = self._clock()
            tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens = tokens - 1.0
            if tokens >= 1.0:
                return now
            return now + (1.0 - tokens) / self.rate

    def refund(self) -> None:
        """Give back a token reserved by a call that never started (interrupted)."""
        with self._lock:
            now = self._clock()
            tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens = min(self.burst, tokens + 1.0)

    def enter(self, sleep: Sleep) -> None:
        start = self.reserve()
        now = self._clock()
        if start <= now:
            return
        began = now
        while now < start:
            if sleep(start - now):
                self.refund()
                self._waited(self._clock() - began)  # an interrupted wait was a wait too
                raise LimitWaitInterrupted(self.name)
            now = self._clock()
        self._waited(now - began)

    async def aenter(self, sleep: ASleep) -> None:
        start = self.reserve()
        now = self._clock()
        if start <= now:
            return
        began = now
        while now < start:
            if await sleep(start - now):
                self.refund()
                self._waited(self._clock() - began)
                raise LimitWaitInterrupted(self.name)
            now = self._clock()
        self._waited(now - began)


class _Waiter:
    """One call waiting for a concurrency slot; ``granted`` once a leaving call handed it its slot."""

    __slots__ = ("granted", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.granted = False
        self.wake = wake


class ConcurrencyLimit(Limit):
    """At most ``concurrency`` calls inside at once; the others wait in line (first come,
    first served: a leaving call hands its slot to the first waiter).

    ``workers``: this worker's equal share of a limit shared by that many processes
    (at least 1).

    Examples:
        >>> limit = ConcurrencyLimit("db", concurrency=1)
        >>> limit.try_enter(), limit.try_enter()
        (True, False)
        >>> limit.leave(); limit.try_enter()
        True
    """

    holds = True

    def __init__(
        self, name: str, *, concurrency: int, workers: int = 1, clock: Clock = monotonic
    ) -> None:
        super().__init__(name, workers=workers, clock=clock)
        if concurrency < 1:
            raise ValueError(f"limit {name!r}: concurrency must be at least 1, not {concurrency}")
        self.total_concurrency = concurrency
        self.concurrency = max(1, concurrency // workers)
        self.inside = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()

    def share(self) -> int:
        return self.concurrency

    def try_enter(self) -> bool:
        """Enter at once if a slot is free and nobody waits for one."""
        with self._lock:
            if self.inside < self.concurrency and not self._waiters:
                self.inside += 1
                return True
            return False

    def _queue(self, wake: Callable[[], None]) -> _Waiter | None:
        """Enter at once (None), or a waiter queued for the next free slot."""
        with self._lock:
            if self.inside < self.concurrency and not self._waiters:
                self.inside += 1
                return None
            waiter = _Waiter(wake)
            self._waiters.append(waiter)
            return waiter

    def _give_up(self, waiter: _Waiter) -> None:
        """A waiter stops waiting: out of the line, or its slot passed on if it got one."""
        with self._lock:
            if waiter.granted:
                self._release()
            else:
                self._waiters.remove(waiter)

    def leave(self) -> None:
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.granted = True  # the slot passes to it: ``inside`` does not change
            waiter.wake()
        else:
            self.inside -= 1

    def enter(self, sleep: Sleep) -> None:
        if self.try_enter():  # a free slot, nobody waiting: the usual case, no wait set up
            return
        signal = threading.Lock()
        signal.acquire()
        waiter = self._queue(signal.release)
        if waiter is None:
            return
        began = self._clock()
        try:
            while not signal.acquire(timeout=POLL):
                if sleep(0):
                    raise LimitWaitInterrupted(self.name)
        except BaseException:
            self._give_up(waiter)
            self._waited(self._clock() - began)
            raise
        self._waited(self._clock() - began)

    async def aenter(self, sleep: ASleep) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        granted: asyncio.Future[None] = loop.create_future()

        def grant() -> None:
            if not granted.done():
                granted.set_result(None)

        def wake() -> None:
            loop.call_soon_threadsafe(grant)

        waiter = self._queue(wake)
        if waiter is None:
            return
        began = self._clock()
        try:
            while True:
                done, _ = await asyncio.wait((granted,), timeout=POLL)
                if done:
                    break
                if await sleep(0):
                    raise LimitWaitInterrupted(self.name)
        except BaseException:
            if not granted.done():
                granted.cancel()
            self._give_up(waiter)
            self._waited(self._clock() - began)
            raise
        self._waited(self._clock() - began)


class Gate:
    """The limits one callable waits for, entered in order of name and left in reverse.

    >>> gate = Gate((ConcurrencyLimit("b", concurrency=1), ConcurrencyLimit("a", concurrency=1)))
    >>> [limit.name for limit in gate.limits]
    ['a', 'b']
    """

    __slots__ = ("limits",)

    def __init__(self, limits: Sequence[Limit]) -> None:
        unique = {id(limit): limit for limit in limits}
        self.limits: tuple[Limit, ...] = tuple(sorted(unique.values(), key=lambda x: x.name))

    def enter(self, sleep: Sleep) -> None:
        """Wait for every limit; on an interruption, leave the ones entered and raise."""
        if len(self.limits) == 1:  # the usual case: nothing to leave if the wait fails
            self.limits[0].enter(sleep)
            return
        entered: list[Limit] = []
        try:
            for limit in self.limits:
                limit.enter(sleep)
                entered.append(limit)
        except BaseException:
            for limit in reversed(entered):
                limit.leave()
            raise

    async def aenter(self, sleep: ASleep) -> None:
        """``enter`` for a coroutine."""
        entered: list[Limit] = []
        try:
            for limit in self.limits:
                await limit.aenter(sleep)
                entered.append(limit)
        except BaseException:
            for limit in reversed(entered):
                limit.leave()
            raise

    def leave(self) -> None:
        """The call has ended."""
        for limit in reversed(self.limits):
            limit.leave()


def limit_figures(limits: Sequence[Limit]) -> dict[str, dict[str, Any]]:
    """Per limit, for a summary: ``{waits, wait_seconds, workers, share}``."""
    return {
        limit.name: {
            "waits": limit.waits,
            "wait_seconds": round(limit.wait_seconds, 6),
            "workers": limit.workers,
            "share": limit.share(),
        }
        for limit in sorted(limits, key=lambda x: x.name)
    }


def polling_sleep(interrupted: Callable[[], bool]) -> ASleep:
    """An async ``sleep`` for ``Limit.aenter`` that looks at ``interrupted()`` every POLL
    seconds (the loop goes on meanwhile)."""

    async def sleep(seconds: float) -> bool:
        import asyncio

        end = monotonic() + seconds
        while not interrupted():
            left = end - monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, POLL))
        return True

    return sleep
