"""Step timeouts without a thread per call: deadline slots, one watchdog thread, carriers.

Python cannot stop a running function, so a ``timeout:`` cannot end a call: it can only
stop waiting for it. Waiting needs a second thread, and starting one per call (as choreo
once did) costs a hundred times a trivial step. Here a timed call runs inline, on the
thread that runs its record, and costs two attribute stores and a test:

- **The deadline slot.** Every ``Worker`` has a ``DeadlineSlot``. Before a timed call the
  worker stores the call's ``Timed`` token (step, phase, timeout) in ``slot.call``; after
  it, it stores None and tests ``slot.lost`` (``arm``/``disarm`` below; the generated
  runners of compiled.py spell the same lines inline).
- **The watchdog.** One thread per coordinator (``Watchdog``) samples the slots of the
  workers that are running records: a thread that can be abandoned registers its slot
  with ``watch`` when it gets work and ``unwatch``-es it once it has been idle for half
  a second, so an idle coordinator costs nothing (the thread ends). A call seen in the
  same slot on every sample (the same token, unit of work and record) for its timeout
  is given up: under the slot's lock the watchdog marks the slot lost, checks that the
  call is still the one it saw, takes a ``Stuck`` snapshot of the record (its bag,
  attempts, the errors so far) and sets ``ctx.cancelled`` for the callable. The worker,
  back from its call, finds ``lost`` and unwinds with ``WorkerAbandoned``: what the
  callable returned, and anything after it, reaches no Result.
- **A fresh worker takes over.** The stuck thread finishes its call in the background and
  ends; whoever handed it the work gets the snapshot through the slot's ``on_stuck``. The
  thread pool (workers.py) starts a fresh thread that ends the record
  (``interpreted.finish_stuck``: StepTimeout, or the next attempt of a retried job and
  the later steps) and serves the queue. Records that
  would run on the caller's own thread (``Coordinator.run``, ``run_many`` with one worker,
  ``run_lines``) run on a ``Carrier`` when the plan has a timeout: a thread that runs what
  the caller hands it (one record, or one list of lines) while the caller waits. When the
  watchdog gives up on a call in it, the caller gets ``Stalled`` with the snapshot, the
  carrier moves to a fresh thread with a fresh ``Worker`` (context, event loop,
  worker-scoped resources), and the caller goes on after the stuck record.
- **async def callables.** The loop's own timer (``asyncio.wait_for``) cancels a call
  that awaits. A loop that does not come back by the deadline (the callable blocks it:
  ``time.sleep``, a blocking client, ``while True: pass``) gets ``ASYNC_GRACE`` seconds
  more, then its thread is abandoned as a sync call's is.

The protocol needs no lock on the common path. The worker writes ``call`` then reads
``lost``; the watchdog writes ``lost`` then reads ``call``: one of them sees the other.
A worker that finds ``lost`` set takes the lock, which the watchdog holds until its
verdict is final. Tokens are constants, so the watchdog tells one call from the next by
the unit of work (``slot.unit``, counted by the thread's owner) and the record's index;
a retried job's attempts each get a token of their own.

Precision: a call is first seen within ``resolution`` seconds of its start, so it is
given up between ``timeout`` and ``timeout + resolution`` seconds after it started (plus
the interpreter's switch interval when the worker holds the GIL), never before.

>>> slot = DeadlineSlot()
>>> arm(slot, None)
>>> disarm(slot)
>>> slot.call is None
True
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from choreo_cli.core.context import Context, DataBag
    from choreo_cli.core.result import ExecutionError
    from choreo_cli.core.signatures import CallSpec

# How late a deadline may be noticed, at most (seconds); a plan with short timeouts
# samples more often (``resolution_for``), never more than every MIN_RESOLUTION.
RESOLUTION = 0.05
MIN_RESOLUTION = 0.002
# What an async call's loop gets past the deadline to cancel the call itself.
ASYNC_GRACE = 0.1
# A watchdog with nothing to watch for this long ends its thread (a later run starts one).
IDLE_EXIT = 2.0

Phase = Literal["precheck", "job"]


class WorkerAbandoned(BaseException):
    """Raised on a worker thread whose timed call the watchdog gave up on, when the call
    comes back: it unwinds the thread. Never reaches a Result or the caller."""


@dataclasses.dataclass(frozen=True, eq=False)
class Timed:
    """What a deadline slot holds while a timed call runs: which call, and its timeout.

    One per timed callable of a plan (``Plan.timed``); each attempt of a retried job gets
    a copy of its own (``again``), so that the watchdog tells attempts apart.
    """

    step: int
    phase: Phase
    spec: CallSpec
    timeout: float
    grace: float = 0.0

    def again(self) -> Timed:
        """A token for another attempt of the same call."""
        return dataclasses.replace(self)


def resolution_for(timeouts: list[float]) -> float:
    """How often to sample for these timeouts: a tenth of the shortest, within bounds."""
    if not timeouts:
        return RESOLUTION
    return max(MIN_RESOLUTION, min(RESOLUTION, min(timeouts) / 10))


class Watched(Protocol):
    """What a deadline slot reads of its worker (a ``workers.Worker``): its context."""

    @property
    def ctx(self) -> Context: ...


_PENDING = "pending"  # the watchdog is deciding (it holds the slot's lock)
_CLAIMED = "claimed"  # the watchdog gave the call up: the worker is abandoned


class DeadlineSlot:
    """A worker's deadline slot: the timed call in progress, and whether it was given up.

    ``on_stuck`` is set by the owner of a thread that can be abandoned (a carrier, the
    thread pool); a slot without one is never given up on.
    """

    __slots__ = ("call", "errors", "lock", "lost", "on_stuck", "started", "unit", "worker")

    def __init__(self, worker: Watched | None = None) -> None:
        self.call: Timed | None = None
        self.lost: str | None = None
        self.unit = 0  # counted by the owner, once per unit of work
        # What a record's rare paths publish for a snapshot: (unit, index, errors, skipped).
        self.errors: tuple[int, int, list[ExecutionError] | None, list[int] | None] | None = None
        self.started: float | None = None  # the record's start, when it is timed
        self.lock = threading.Lock()
        self.on_stuck: Callable[[Stuck], None] | None = None
        self.worker = worker


def arm(slot: DeadlineSlot, timed: Timed | None) -> None:
    """Before a timed call (the generated code spells this inline)."""
    slot.call = timed


def disarm(slot: DeadlineSlot) -> None:
    """After a timed call, whatever it did: raise WorkerAbandoned if it was given up on."""
    slot.call = None
    if slot.lost:
        lost(slot)


def lost(slot: DeadlineSlot) -> None:
    """The rare path of ``disarm``: wait for the watchdog's verdict; raise if abandoned."""
    if abandoned(slot):
        raise WorkerAbandoned


def abandoned(slot: DeadlineSlot) -> bool:
    """True once the watchdog gave up a call of the slot's worker (its thread must end);
    waits while the watchdog is deciding."""
    if not slot.lost:
        return False
    with slot.lock:
        return slot.lost == _CLAIMED


@dataclasses.dataclass(frozen=True)
class Stuck:
    """A record whose timed call the watchdog gave up on, as it stood at the deadline."""

    timed: Timed
    index: int
    line: int | None
    record: Any
    bag: DataBag
    attempts: dict[str, int] | None
    conv: dict[Any, Any] | None
    errors: list[ExecutionError] | None
    skipped: list[int] | None
    started: float | None

    @classmethod
    def take(cls, slot: DeadlineSlot, timed: Timed) -> Stuck:
        """The snapshot of the slot's worker's record (under the slot's lock, claimed)."""
        from choreo_cli.core.context import DataBag

        worker = slot.worker
        assert worker is not None
        ctx = worker.ctx
        ctx.timed_out = True  # ctx.cancelled, for the callable that keeps running
        published = slot.errors
        errors = skipped = None
        if published is not None and published[0] == slot.unit and published[1] == ctx.index:
            errors, skipped = published[2], published[3]
        old = ctx.bag
        # The callable keeps the old bag: the Result must not change with what it does later.
        bag = DataBag(old._names)
        bag._job = None if old._job is None else dict(old._job)
        bag._pre = None if old._pre is None else dict(old._pre)
        return cls(
            timed=timed,
            index=ctx.index,
            line=ctx.line,
            record=ctx.record,
            bag=bag,
            attempts=None if ctx._attempts is None else dict(ctx._attempts),
            conv=ctx._conv,
            errors=errors,
            skipped=skipped,
            started=slot.started,
        )


def _observe(slot: DeadlineSlot) -> tuple[Timed, int, int] | None:
    """The timed call in progress in ``slot`` with what tells it from the next one (its
    unit of work and record), or None. Read in this order so that a call started after
    the record's index was read is never taken for an earlier one."""
    worker = slot.worker
    if worker is None:
        return None
    unit = slot.unit
    index = worker.ctx.index
    call = slot.call
    if call is None or slot.lost is not None:
        return None
    if slot.unit != unit or worker.ctx.index != index:
        return None
    return call, unit, index


class Watchdog:
    """One thread that gives up timed calls past their deadline (see the module docstring).

    >>> watchdog = Watchdog()
    >>> slot = DeadlineSlot()
    >>> watchdog.watch(slot); watchdog.unwatch(slot)
    """

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self.resolution = resolution
        self._cond = threading.Condition(threading.Lock())
        self._busy: set[DeadlineSlot] = set()
        self._thread: threading.Thread | None = None
        self._idle = False

    def watch(self, slot: DeadlineSlot) -> None:
        """A unit of work starts on ``slot``'s worker: sample it until ``unwatch``."""
        with self._cond:
            self._busy.add(slot)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="choreo-watchdog", daemon=True
                )
                self._thread.start()
            elif self._idle:
                self._cond.notify()

    def unwatch(self, slot: DeadlineSlot) -> None:
        """The unit of work on ``slot``'s worker ended (or its thread was abandoned)."""
        with self._cond:
            self._busy.discard(slot)

    def _run(self) -> None:
        seen: dict[DeadlineSlot, tuple[Timed, int, int, float]] = {}
        cond = self._cond
        while True:
            with cond:
                if not self._busy:
                    seen.clear()
                    self._idle = True
                    cond.wait(IDLE_EXIT)
                    self._idle = False
                    if not self._busy:
                        self._thread = None
                        return
                busy = list(self._busy)
            now = monotonic()
            wake = now + self.resolution
            for slot in busy:
                got = _observe(slot)
                if got is None:
                    seen.pop(slot, None)
                    continue
                old = seen.get(slot)
                if old is None or old[0] is not got[0] or old[1:3] != got[1:]:
                    seen[slot] = (*got, now)
                    continue
                timed = got[0]
                due = old[3] + timed.timeout + timed.grace
                if now >= due:
                    del seen[slot]
                    self._claim(slot, got)
                else:
                    wake = min(wake, due)
            for slot in [s for s in seen if s not in busy]:
                del seen[slot]
            with cond:
                delay = wake - monotonic()
                if delay > 0:
                    cond.wait(delay)

    def _claim(self, slot: DeadlineSlot, seen: tuple[Timed, int, int]) -> None:
        """Give up the call ``seen`` in ``slot`` if it is still the one running."""
        with slot.lock:
            slot.lost = _PENDING
            now = _observe_claiming(slot)
            if now is None or now[0] is not seen[0] or now[1:] != seen[1:]:
                slot.lost = None
                return
            slot.lost = _CLAIMED
            stuck = Stuck.take(slot, seen[0])
        self.unwatch(slot)
        on_stuck = slot.on_stuck
        if on_stuck is not None:
            on_stuck(stuck)  # it must not raise: the watchdog serves every worker


def _observe_claiming(slot: DeadlineSlot) -> tuple[Timed, int, int] | None:
    """``_observe`` while ``lost`` is pending: the worker cannot leave its call meanwhile."""
    worker = slot.worker
    call = slot.call
    if worker is None or call is None or slot.on_stuck is None:
        return None
    return call, slot.unit, worker.ctx.index
