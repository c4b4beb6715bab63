"""Worker state and worker threads: where a coordinator's records run.

``Worker`` is what one thread owns; ``ThreadPool`` runs records on ``workers`` threads;
``Carrier`` runs the records of a thread that must not get stuck in a timed call (the
caller's own, when the plan has a timeout: see watchdog.py).
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from choreo_cli.core.context import Context, DataBag, _RunFlags
from choreo_cli.core.event_loop import close_loop, new_event_loop, run
from choreo_cli.core.timings import StepTimes
from choreo_cli.core.watchdog import DeadlineSlot, Stuck, Watchdog, WorkerAbandoned, abandoned

if TYPE_CHECKING:
    import asyncio

    from choreo_cli.core.resources import ResourcePool, Resources
    from choreo_cli.core.result import Result

T = TypeVar("T")

# A carrier thread idle this long lets the watchdog rest (seconds); while it works, its
# deadline slot stays registered from one unit of work to the next.
IDLE_UNWATCH = 0.5
# At interpreter exit, how long the threads of coordinators never closed get to end, in
# all (seconds): a thread busy longer is left to end with the process.
EXIT_GRACE = 2.0


class Worker:
    """What one worker (thread) owns: its resources view, its Context and, lazily, an event loop.

    The Context is reused from record to record (its per-record fields are reset): a
    callable must not keep ``ctx`` beyond the record it was given for.
    """

    __slots__ = (
        "__weakref__",
        "carrier",
        "countdown",
        "ctx",
        "escaped",
        "loop",
        "resources",
        "slot",
        "streak",
        "task",
        "times",
        "weight",
    )

    def __init__(self, resources: Resources, values: Mapping[str, Any], flags: _RunFlags) -> None:
        self.resources = resources
        self.ctx = Context(values, resources, DataBag(), None, 0, None, flags)
        # Set before each timed call, cleared after; a thread that can be abandoned
        # (a carrier's, the pool's) gives it an owner (see watchdog.py).
        self.slot = DeadlineSlot(self)
        # The thread that runs this worker's records when the plan has a timeout and the
        # worker's own thread cannot be abandoned (see Coordinator.carrier_for).
        self.carrier: Carrier | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # What another task or a callback raised out of the loop while an async callable
        # was awaited in place: that call raises it (calling.acall, ThreadPool._serve_async).
        self.escaped: BaseException | None = None
        self.task: asyncio.Task[Any] | None = None  # the thread pool's serving task
        # How long its calls took (core/timings.py): the records still to run before the
        # next one timed, and how many records the next one timed stands for.
        self.times = StepTimes()
        self.countdown = 0
        self.weight = 1
        self.streak = 0

    def renew_context(self, old: Context) -> Context:
        """Give the worker a fresh Context for the rest of ``old``'s record.

        A callable that ran past its timeout keeps ``old`` (its ``cancelled`` stays true);
        the worker's next steps and records must not share it.
        """
        ctx = Context(
            old.values, old.resources, old.bag, old.record, old.index, old.line, old._flags
        )
        ctx._frame = old._frame
        ctx._conv = old._conv
        ctx._attempts = old._attempts
        self.ctx = ctx
        return ctx

    @property
    def watched(self) -> bool:
        """True on a thread that the watchdog can abandon (a carrier's, the pool's): timed
        calls run inline there."""
        return self.slot.on_stuck is not None

    def open_loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop, made on first use (see event_loop.py)."""
        loop = self.loop
        if loop is None:
            loop = self.loop = new_event_loop()
            # A coordinator used without ``with`` or close() must not leak the loop.
            weakref.finalize(self, _close_loop, loop, threading.current_thread())
        return loop

    def run_coroutine(self, coro: Any) -> Any:
        return run(self.loop or self.open_loop(), coro)

    def close(self, pool: ResourcePool) -> list[BaseException]:
        self.task = None
        loop, self.loop = self.loop, None
        if loop is not None:
            close_loop(loop)
        return pool.close_worker(self.resources._local)


def _close_loop(loop: asyncio.AbstractEventLoop, owner: threading.Thread) -> None:
    """Close the loop of a worker that was collected, or that is left at interpreter exit.

    Only from the thread that made it, or once that thread has ended: a pool's or a
    carrier's thread closes its own loop as it ends (at exit too: ``_end_unclosed``), and
    closing it under the thread could end the thread with "Cannot close a running event
    loop" or "Event loop is closed". A thread the watchdog abandoned in a call that
    blocks its loop keeps the loop until the process ends (see watchdog.py).
    """
    if loop.is_running() or (owner.is_alive() and owner is not threading.current_thread()):
        return
    close_loop(loop)


# Thread pools and carriers whose threads run, for ``_end_unclosed``.
_unclosed: weakref.WeakSet[ThreadPool | Carrier] = weakref.WeakSet()
_unclosed_lock = threading.Lock()
_exit_hooked = False


def _track(owner: ThreadPool | Carrier) -> None:
    """Have ``owner``'s threads ended at interpreter exit unless it is closed first."""
    global _exit_hooked
    with _unclosed_lock:
        if not _exit_hooked:
            atexit.register(_end_unclosed)
            _exit_hooked = True
        _unclosed.add(owner)


def _end_unclosed() -> None:
    """At interpreter exit: end the threads of the pools and carriers of coordinators
    that were never closed, and wait up to EXIT_GRACE for them.

    Each thread then closes its worker (its event loop, from the thread that ran it, and
    its worker-scoped resources) as ``close()`` would have: the records already handed
    to a thread are run first, as ``close()`` runs them. Without this the daemon threads
    were frozen at exit with their loops open, and a loop closed from the main thread
    under a thread still running it printed a traceback per worker.
    """
    with _unclosed_lock:
        owners = list(_unclosed)
        _unclosed.clear()
    deadline = monotonic() + EXIT_GRACE
    try:
        for owner in owners:
            owner.stop()
        for owner in owners:
            owner.wait(deadline)
    except KeyboardInterrupt:  # Ctrl-C while the process ends: leave the rest
        pass


class WorkerHost(Protocol):
    """What a ThreadPool runs records with (the Coordinator is one)."""

    def new_worker(self) -> Worker: ...

    def build_worker(self, worker: Worker) -> None: ...

    def close_worker(self, worker: Worker) -> list[BaseException]: ...

    def detach_worker(self, worker: Worker) -> None: ...

    def has_async_steps(self) -> bool: ...

    def run_item(self, item: Any, index: int, worker: Worker) -> Result: ...

    def run_item_async(self, item: Any, index: int, worker: Worker) -> Awaitable[Result]: ...

    def finish_stuck(self, stuck: Stuck, raw: bytes | None, worker: Worker) -> Result: ...

    def crashed(self, item: Any, index: int, exc: BaseException) -> Result: ...


# A task of the pool: (sequence number, item, where its Result goes, the watchdog of the
# run's timeouts or None).
Task = tuple[int, Any, "queue.SimpleQueue[Any]", "Watchdog | None"]


class _Member:
    """One thread of the pool: its worker and the task it runs."""

    __slots__ = ("done", "task", "watching", "worker")

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.task: Task | None = None
        self.done = threading.Event()  # set when the thread ends or is abandoned
        # The watchdog the worker's slot is registered with (a plan with a timeout): from
        # its first task until it has been idle for IDLE_UNWATCH.
        self.watching: Watchdog | None = None


class ThreadPool:
    """Worker threads that live as long as the coordinator (so worker resources stay put).

    When the watchdog gives up on a timed call of a thread (see watchdog.py), the thread
    is abandoned: a fresh one (with a fresh worker) ends that record, hands its Result
    over, and takes the abandoned thread's place.
    """

    def __init__(self, coordinator: WorkerHost, size: int, *, prebuild: bool = False) -> None:
        self._coordinator = coordinator
        self._prebuild = prebuild
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._errors: list[BaseException] = []
        self._started: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closing = False
        self._members: list[_Member] = []
        self._spawned = 0
        _track(self)
        for _ in range(size):
            self._spawn()
        # Each worker builds its worker-scoped resources first: a failing factory is
        # reported here, before any record runs.
        failures = [e for e in (self._started.get() for _ in range(size)) if e is not None]
        if failures:
            self.shutdown()
            raise failures[0]

    def submit(
        self,
        seq: int,
        item: Any,
        outq: queue.SimpleQueue[Any],
        watchdog: Watchdog | None = None,
    ) -> None:
        """Run ``item`` as record ``seq``; ``(seq, Result)`` goes to ``outq``. With
        ``watchdog`` (the plan has a timeout) the thread is watched while it runs it."""
        self._tasks.put((seq, item, outq, watchdog))

    def _spawn(self, first: tuple[Task, Stuck] | None = None) -> None:
        n = self._spawned
        self._spawned += 1
        member = _Member(self._coordinator.new_worker())
        member.worker.slot.on_stuck = lambda stuck: self._stuck(member, stuck)
        self._members.append(member)
        thread = threading.Thread(
            target=self._main, args=(member, first), name=f"choreo-worker-{n}", daemon=True
        )
        thread.start()

    def _main(self, member: _Member, first: tuple[Task, Stuck] | None) -> None:
        coordinator = self._coordinator
        worker = member.worker
        try:
            if first is None:
                try:
                    if self._prebuild:
                        coordinator.build_worker(worker)
                    if coordinator.has_async_steps():
                        worker.open_loop()  # before the first record, not during it
                except Exception as exc:
                    self._started.put(exc)
                else:
                    self._started.put(None)
            else:
                if coordinator.has_async_steps():
                    worker.open_loop()
                self._finish(member, *first)
            if worker.loop is not None:
                self._serve_async(member)
            else:
                self._serve(member)
        except WorkerAbandoned:
            pass
        finally:
            if member.watching is not None:
                member.watching.unwatch(worker.slot)
            errors = coordinator.close_worker(worker)
            if not abandoned(worker.slot):  # an abandoned worker's teardown errors go nowhere
                self._errors.extend(errors)
            member.done.set()

    def _stuck(self, member: _Member, stuck: Stuck) -> None:
        """The watchdog gave up on a call of ``member``'s thread (on the watchdog's thread)."""
        task = member.task
        assert task is not None
        self._coordinator.detach_worker(member.worker)
        try:
            with self._lock:
                self._members.remove(member)
                if not self._closing:
                    # The fresh thread ends the record first: that may run the next attempt.
                    self._spawn((task, stuck))
        except Exception as exc:  # no thread to be had: the record fails, the run goes on
            task[2].put((task[0], self._coordinator.crashed(task[1], task[0], exc)))
        member.done.set()

    def _finish(self, member: _Member, task: Task, stuck: Stuck) -> None:
        """End the record of a task whose thread was abandoned; hand its Result over."""
        coordinator = self._coordinator
        raw = getattr(task[1], "raw", None)

        def finish(item: Any, seq: int, worker: Worker) -> Result:
            return coordinator.finish_stuck(stuck, raw, worker)

        task[2].put((task[0], self._run_task(member, task, finish)))

    def _run_task(
        self, member: _Member, task: Task, run: Callable[[Any, int, Worker], Result]
    ) -> Result:
        """``run(item, seq, worker)``, the work of ``task``; watched by the watchdog when the
        plan has a timeout. Raises WorkerAbandoned when the watchdog gave the thread up
        meanwhile."""
        if not self._watch(member, task):
            return self._guarded(member, task, run)
        result = self._guarded(member, task, run)
        if abandoned(member.worker.slot):
            raise WorkerAbandoned
        return result

    def _watch(self, member: _Member, task: Task) -> bool:
        """Before ``task``: when the plan has a timeout, a unit of work of the member's slot
        that the watchdog watches (registered once, not per task); False when it has none."""
        watchdog = task[3]
        if watchdog is None:
            return False
        slot = member.worker.slot
        member.task = task
        slot.unit += 1
        if member.watching is not watchdog:
            if member.watching is not None:
                member.watching.unwatch(slot)
            watchdog.watch(slot)
            member.watching = watchdog
        return True

    def _take(self, member: _Member) -> Task | None:
        """The next task (None: shut down). A member idle for IDLE_UNWATCH while the
        watchdog watches it lets the watchdog rest."""
        watching = member.watching
        if watching is None:
            return self._tasks.get()
        try:
            return self._tasks.get(timeout=IDLE_UNWATCH)
        except queue.Empty:
            watching.unwatch(member.worker.slot)
            member.watching = None
            return self._tasks.get()

    def _guarded(
        self, member: _Member, task: Task, run: Callable[[Any, int, Worker], Result]
    ) -> Result:
        seq, item = task[0], task[1]
        try:
            return run(item, seq, member.worker)
        except WorkerAbandoned:
            raise
        except BaseException as exc:  # a defect must not hang the reader waiting for it
            return self._coordinator.crashed(item, seq, exc)

    def _serve(self, member: _Member) -> None:
        coordinator = self._coordinator
        run_item = coordinator.run_item
        worker = member.worker
        tasks = self._tasks
        while True:
            task = tasks.get() if member.watching is None else self._take(member)
            if task is None:
                return
            seq, item, outq, watchdog = task
            if watchdog is None:
                try:
                    result = run_item(item, seq, worker)
                except BaseException as exc:  # a defect must not hang the reader waiting for it
                    result = coordinator.crashed(item, seq, exc)
            else:
                result = self._run_task(member, task, run_item)
            outq.put((seq, result))

    def _serve_async(self, member: _Member) -> None:
        """Run the worker's records in one long-running task on its event loop.

        A record's async callables are then awaited in place (``run_item_async``): no task
        and no run of the loop of their own per call, which is most of what a call costs
        in the time the thread holds the GIL. With dozens of threads taking turns at the
        GIL, each such microsecond delays the others (the README's "Scaling out": 64
        workers whose job sleeps 5 ms; `bench/bench_executors.py` measures it).

        Two things a call run with ``run()`` would see are kept: a KeyboardInterrupt or
        SystemExit that another task or a callback raises out of the loop is raised by the
        call being awaited (``Worker.escaped``) and the loop goes on; and a cancellation
        requested but never delivered (a callable that cancels its own task and returns)
        ends that call only: the worker goes on in a fresh task.
        """
        worker = member.worker
        loop = worker.loop or worker.open_loop()
        while True:
            task = loop.create_task(self._serve_in_task(member))
            while True:
                try:
                    if run(loop, task):
                        return
                    break  # a fresh task for the next records
                except WorkerAbandoned:
                    raise
                except BaseException as exc:
                    if loop.is_closed():
                        raise
                    if task.done():
                        break
                    worker.escaped = exc

    async def _serve_in_task(self, member: _Member) -> bool:
        """Records until shutdown (True), or until this task must not go on (False)."""
        import asyncio

        coordinator = self._coordinator
        tasks = self._tasks
        worker = member.worker
        this = worker.task = asyncio.current_task()
        slot = worker.slot
        while True:
            # A blocking get: between records the loop has nothing to run, as a loop run
            # per call had not either.
            got = tasks.get() if member.watching is None else self._take(member)
            if got is None:
                return True
            seq, item, outq, _ = got
            watched = self._watch(member, got)
            try:
                result = await coordinator.run_item_async(item, seq, worker)
            except WorkerAbandoned:
                raise
            except BaseException as exc:  # a defect must not hang the reader waiting for it
                result = coordinator.crashed(item, seq, exc)
            if watched and abandoned(slot):
                raise WorkerAbandoned
            outq.put((seq, result))
            if _cancel_requested(this):
                return False

    def shutdown(self) -> list[BaseException]:
        _unclosed.discard(self)
        for member in self.stop():
            member.done.wait()  # the thread ended, or was abandoned (it ends on its own)
        return self._errors

    def stop(self) -> list[_Member]:
        """Tell every thread to end after the tasks already submitted; its members."""
        with self._lock:
            members = list(self._members)
            if not self._closing:
                self._closing = True
                for _ in members:
                    self._tasks.put(None)
        return members

    def wait(self, deadline: float) -> None:
        """Wait for the threads told to end by ``stop``, until ``deadline`` (monotonic)."""
        for member in self.stop():
            member.done.wait(max(0.0, deadline - monotonic()))


def _cancel_requested(task: asyncio.Task[Any] | None) -> bool:
    """True if ``task`` has a cancellation requested and not undone (``cancelling()``
    is 3.11+; ``_must_cancel``: requested and not yet delivered)."""
    if task is None:
        return False
    cancelling = getattr(task, "cancelling", None)
    return bool(getattr(task, "_must_cancel", False) or (cancelling and cancelling()))


class Stalled(Exception):
    """Raised by ``Carrier.call`` when the watchdog gave up on a timed call in it."""

    def __init__(self, stuck: Stuck) -> None:
        super().__init__(f"{stuck.timed.spec.name} ran past its timeout")
        self.stuck = stuck


class CarrierHost(Protocol):
    """What a Carrier makes its workers with (the Coordinator is one)."""

    def new_worker(self) -> Worker: ...

    def build_worker(self, worker: Worker) -> None: ...

    def close_worker(self, worker: Worker) -> list[BaseException]: ...

    def detach_worker(self, worker: Worker) -> None: ...

    def interrupt(self, reason: str) -> None: ...


_OK = "ok"
_RAISED = "raised"
_STUCK = "stuck"


class _Lane:
    """One thread of a carrier: its queues and its worker."""

    __slots__ = ("answers", "done", "errors", "inbox", "outbox", "worker")

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.inbox: queue.SimpleQueue[Callable[[Worker], Any] | None] = queue.SimpleQueue()
        # Each answer (or the watchdog's snapshot) goes to ``answers``, then a token to
        # ``outbox`` wakes the caller.
        self.answers: list[tuple[str, Any]] = []
        self.outbox: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.errors: list[BaseException] = []
        self.done = threading.Event()


class Carrier:
    """A thread that runs a caller's records while the caller waits, and that can be
    abandoned: what runs records on the caller's behalf when a plan has a timeout.

    ``call(fn)`` runs ``fn(worker)`` on the carrier's thread and returns what it returns
    (or raises what it raises). When the watchdog gives up on a timed call in it,
    ``call`` raises ``Stalled`` at the deadline and the next call runs on a fresh thread.
    """

    def __init__(self, host: CarrierHost, watchdog: Watchdog) -> None:
        self._host = host
        self._watchdog = watchdog
        self._lane: _Lane | None = None

    def call(self, fn: Callable[[Worker], T]) -> T:
        """``fn(worker)`` on the carrier's thread; raises Stalled (see the class)."""
        lane = self._lane or self._start()
        lane.inbox.put(fn)
        answers = lane.answers
        interrupts = 0
        # The answer is taken from a list, not from the queue that wakes this thread: a
        # KeyboardInterrupt raised just as the queue gave it up would lose it.
        while not answers:
            try:
                lane.outbox.get()
            except KeyboardInterrupt:
                # Ctrl-C without a handler of its own (a script): the callable runs on the
                # carrier, so the run is interrupted as if it had raised KeyboardInterrupt
                # there; a second one leaves the carrier behind.
                interrupts += 1
                if interrupts > 1:
                    self._retire(lane)
                    raise
                self._host.interrupt("KeyboardInterrupt")
        kind, value = answers.pop()
        if kind == _OK:
            result: T = value
            return result
        if kind == _RAISED:
            raise value
        self._retire(lane)
        raise Stalled(value)

    def prebuild(self) -> None:
        """Build the worker-scoped resources of the carrier's worker now, on its thread."""
        self.call(self._host.build_worker)

    def close(self) -> list[BaseException]:
        """End the thread (its worker's resources are closed on it); their errors."""
        _unclosed.discard(self)
        lane, self._lane = self._lane, None
        if lane is None:
            return []
        lane.inbox.put(None)
        lane.done.wait()
        return lane.errors

    def stop(self) -> None:
        """Tell the thread to end after the call it runs (at interpreter exit)."""
        lane = self._lane
        if lane is not None:
            lane.inbox.put(None)

    def wait(self, deadline: float) -> None:
        """Wait for the thread told to end by ``stop``, until ``deadline`` (monotonic)."""
        lane = self._lane
        if lane is not None:
            lane.done.wait(max(0.0, deadline - monotonic()))

    def _retire(self, lane: _Lane) -> None:
        """Leave ``lane`` behind: its thread ends when its call comes back; its worker's
        resources are left to it (never closed under a running callable)."""
        if self._lane is lane:
            self._lane = None
        self._host.detach_worker(lane.worker)

    def _start(self) -> _Lane:
        lane = _Lane(self._host.new_worker())
        threading.Thread(
            target=_serve_lane,
            args=(lane, weakref.ref(self._host), self._watchdog),
            name="choreo-carrier",
            daemon=True,
        ).start()
        # A coordinator dropped without close(): its carrier's thread ends with it.
        weakref.finalize(self, lane.inbox.put, None)
        self._lane = lane
        _track(self)
        return lane


def _serve_lane(lane: _Lane, host: Callable[[], CarrierHost | None], watchdog: Watchdog) -> None:
    """A carrier thread: run what comes in, answer each, until told to stop or abandoned.

    A function of its own, holding its host weakly: the thread keeps neither the Carrier
    nor the coordinator alive.
    """
    worker = lane.worker
    slot = worker.slot
    answers = lane.answers
    outbox = lane.outbox

    def stuck(snapshot: Stuck) -> None:
        answers.append((_STUCK, snapshot))
        outbox.put(None)

    slot.on_stuck = stuck
    inbox = lane.inbox
    watching = False  # the slot is registered with the watchdog
    try:
        while True:
            if watching:
                try:
                    fn = inbox.get(timeout=IDLE_UNWATCH)
                except queue.Empty:
                    # Idle: the watchdog may rest (a unit of work registers the slot again).
                    watchdog.unwatch(slot)
                    watching = False
                    continue
            else:
                fn = inbox.get()
            if fn is None:
                return
            try:
                slot.unit += 1
                if not watching:
                    watchdog.watch(slot)
                    watching = True
                answer = (_OK, fn(worker))
            except WorkerAbandoned:
                return
            except BaseException as exc:
                answer = (_RAISED, exc)
            fn = None  # what the call referenced is not kept while the thread waits
            if abandoned(slot):
                return
            answers.append(answer)
            outbox.put(None)
    finally:
        watchdog.unwatch(slot)
        owner = host()
        errors = [] if owner is None else owner.close_worker(worker)
        if not abandoned(slot):  # an abandoned worker's teardown errors go nowhere
            lane.errors.extend(errors)
        lane.done.set()


def carried_result(
    carrier: Carrier,
    fn: Callable[[Worker], Result],
    finish: Callable[[Stuck, Worker], Result],
) -> Result:
    """The Result of one record run by ``fn`` on ``carrier``: if the watchdog gives up on a
    call in it, ``finish`` ends the record (StepTimeout, or the next attempt of a retried
    job) on the carrier's fresh thread, which may be given up on in turn."""
    run = fn
    while True:
        try:
            return carrier.call(run)
        except Stalled as stalled:
            run = _finishing(finish, stalled.stuck)


def _finishing(
    finish: Callable[[Stuck, Worker], Result], stuck: Stuck
) -> Callable[[Worker], Result]:
    def run(worker: Worker) -> Result:
        return finish(stuck, worker)

    return run
