"""Worker state and worker threads: where a coordinator's records run."""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from choreo_cli.core.context import Context, DataBag, _RunFlags
from choreo_cli.core.event_loop import new_event_loop, run

if TYPE_CHECKING:
    import asyncio

    from choreo_cli.core.resources import ResourcePool, Resources
    from choreo_cli.core.result import Result


class Worker:
    """What one worker (thread) owns: its resources view, its Context and, lazily, an event loop.

    The Context is reused from record to record (its per-record fields are reset): a
    callable must not keep ``ctx`` beyond the record it was given for.
    """

    __slots__ = ("__weakref__", "ctx", "escaped", "loop", "resources", "task")

    def __init__(self, resources: Resources, values: Mapping[str, Any], flags: _RunFlags) -> None:
        self.resources = resources
        self.ctx = Context(values, resources, DataBag(), None, 0, None, flags)
        self.loop: asyncio.AbstractEventLoop | None = None
        # What another task or a callback raised out of the loop while an async callable
        # was awaited in place: that call raises it (calling.acall, ThreadPool._serve_async).
        self.escaped: BaseException | None = None
        self.task: asyncio.Task[Any] | None = None  # the thread pool's serving task

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

    def open_loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop, made on first use (see event_loop.py)."""
        loop = self.loop
        if loop is None:
            loop = self.loop = new_event_loop()
            # A coordinator used without ``with`` or close() must not leak the loop.
            weakref.finalize(self, loop.close)
        return loop

    def run_coroutine(self, coro: Any) -> Any:
        return run(self.loop or self.open_loop(), coro)

    def close(self, pool: ResourcePool) -> list[BaseException]:
        self.task = None
        if self.loop is not None:
            self.loop.close()
            self.loop = None
        return pool.close_worker(self.resources._local)


class WorkerHost(Protocol):
    """What a ThreadPool runs records with (the Coordinator is one)."""

    def new_worker(self) -> Worker: ...

    def build_worker(self, worker: Worker) -> None: ...

    def close_worker(self, worker: Worker) -> list[BaseException]: ...

    def has_async_steps(self) -> bool: ...

    def run_item(self, item: Any, index: int, worker: Worker) -> Result: ...

    def run_item_async(self, item: Any, index: int, worker: Worker) -> Awaitable[Result]: ...

    def crashed(self, item: Any, index: int, exc: BaseException) -> Result: ...


class ThreadPool:
    """Worker threads that live as long as the coordinator (so worker resources stay put)."""

    def __init__(self, coordinator: WorkerHost, size: int, *, prebuild: bool = False) -> None:
        self._coordinator = coordinator
        self._prebuild = prebuild
        self._tasks: queue.SimpleQueue[tuple[int, Any, queue.SimpleQueue[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._errors: list[BaseException] = []
        self._started: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._main, name=f"choreo-worker-{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()
        # Each worker builds its worker-scoped resources first: a failing factory is
        # reported here, before any record runs.
        failures = [e for e in (self._started.get() for _ in self._threads) if e is not None]
        if failures:
            self.shutdown()
            raise failures[0]

    def submit(self, seq: int, item: Any, outq: queue.SimpleQueue[Any]) -> None:
        self._tasks.put((seq, item, outq))

    def _main(self) -> None:
        coordinator = self._coordinator
        worker = coordinator.new_worker()
        try:
            try:
                if self._prebuild:
                    coordinator.build_worker(worker)
                if coordinator.has_async_steps():
                    worker.open_loop()  # before the first record, not during it
            except Exception as exc:
                self._started.put(exc)
            else:
                self._started.put(None)
            if worker.loop is not None:
                self._serve_async(worker)
            else:
                self._serve(worker)
        finally:
            self._errors.extend(coordinator.close_worker(worker))

    def _serve(self, worker: Worker) -> None:
        coordinator = self._coordinator
        while True:
            task = self._tasks.get()
            if task is None:
                return
            seq, item, outq = task
            try:
                result = coordinator.run_item(item, seq, worker)
            except BaseException as exc:  # a defect must not hang the reader waiting for it
                result = coordinator.crashed(item, seq, exc)
            outq.put((seq, result))

    def _serve_async(self, worker: Worker) -> None:
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
        loop = worker.loop or worker.open_loop()
        while True:
            task = loop.create_task(self._serve_in_task(worker))
            while True:
                try:
                    if run(loop, task):
                        return
                    break  # a fresh task for the next records
                except BaseException as exc:
                    if loop.is_closed():
                        raise
                    if task.done():
                        break
                    worker.escaped = exc

    async def _serve_in_task(self, worker: Worker) -> bool:
        """Records until shutdown (True), or until this task must not go on (False)."""
        import asyncio

        coordinator = self._coordinator
        tasks = self._tasks
        this = worker.task = asyncio.current_task()
        while True:
            # A blocking get: between records the loop has nothing to run, as a loop run
            # per call had not either.
            got = tasks.get()
            if got is None:
                return True
            seq, item, outq = got
            try:
                result = await coordinator.run_item_async(item, seq, worker)
            except BaseException as exc:  # a defect must not hang the reader waiting for it
                result = coordinator.crashed(item, seq, exc)
            outq.put((seq, result))
            if _cancel_requested(this):
                return False

    def shutdown(self) -> list[BaseException]:
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()
        return self._errors


def _cancel_requested(task: asyncio.Task[Any] | None) -> bool:
    """True if ``task`` has a cancellation requested and not undone (``cancelling()``
    is 3.11+; ``_must_cancel``: requested and not yet delivered)."""
    if task is None:
        return False
    cancelling = getattr(task, "cancelling", None)
    return bool(getattr(task, "_must_cancel", False) or (cancelling and cancelling()))
