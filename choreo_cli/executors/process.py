"""Parent side of `--executor process` (choreo's process): start workers, send batches, get results.

The workers (for CPU-bound steps) run ``process_worker.worker_main``: each loads the
pipeline itself. Each worker has two pipes of its own (batches in, results out) so
that a worker that dies takes nothing down with it: its in-flight records fail with
``WorkerDied``, the batches it had not started go to another worker, and a new worker
takes its place.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from choreo_cli.errors import ResourceError
from choreo_cli.executors import logs
from choreo_cli.executors.base import INTERRUPTED, WorkerDied, describe_exit
from choreo_cli.executors.batching import Batch, BatchExecutor, pickled
from choreo_cli.executors.process_worker import PROTOCOL, worker_main

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess

    from choreo_cli.pipeline.definitions import Pipeline

# Batches sent to one worker and not yet back: one running, one waiting, so it never idles.
PER_WORKER = 2
# How long close() waits for a worker's teardown before it kills the worker.
TEARDOWN_SECONDS = 60.0


class _Worker:
    """The parent's handle on one worker process."""

    __slots__ = ("batches", "current", "number", "pid", "process", "ready", "results", "tasks")

    def __init__(
        self,
        number: int,
        process: SpawnProcess,
        tasks: Connection,
        results: Connection,
        current: Any,
    ) -> None:
        self.number = number
        self.current = current  # shared: the index of the record the worker is running
        self.process = process
        self.tasks = tasks
        self.results = results
        self.ready = False
        self.pid = process.pid
        self.batches: deque[Batch] = deque()  # sent, in the order the worker runs them


class ProcessExecutor(BatchExecutor):
    """Runs records in ``workers`` processes (spawned, not forked: choreo has threads).

    >>> with ProcessExecutor(load_pipeline("pipeline.yaml"), workers=2) as executor:  # doctest: +SKIP
    ...     results = list(executor.run_many(records))
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        workers: int,
        overrides: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        fail_fast: bool = False,
    ) -> None:
        super().__init__(
            pipeline, workers=workers, overrides=overrides, dry_run=dry_run, fail_fast=fail_fast
        )
        self._context = multiprocessing.get_context("spawn")
        # The stop flag (base.py: RUNNING, HALTED, INTERRUPTED) of choreo and every worker:
        # each worker reads it before each record, and raises it itself when a step raised
        # KeyboardInterrupt or, with fail-fast, a record did not succeed, so the others
        # start no new record at once. Shared memory, not an Event: setting it takes no
        # lock, so a signal handler can, and a worker that died holding a lock cannot
        # block it.
        self._flag = self._context.RawValue("b", 0)
        self._procs: list[_Worker] = []
        self._started = 0
        self._opened = False
        self._closed = False
        self._startup_error: str | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def open(self, *, prebuild_workers: bool = True) -> ProcessExecutor:
        """Start the workers and wait until each has built its resources.

        Worker-scoped resources are always built at a worker's start (``prebuild_workers``
        is accepted for the Coordinator's signature): a failing factory is reported here.

        Raises ResourceError (naming the resource, or why the worker could not start).
        """
        if self._opened:
            return self
        self._opened = True
        # Never closed (a script without ``with``): at exit multiprocessing would join the
        # workers, which ignore SIGTERM and wait for batches, so the process never ended.
        atexit.register(self._close_at_exit)
        try:
            for _ in range(self.workers):
                self._procs.append(self._start())
            for proc in self._procs:
                while not proc.ready:
                    self._read(proc, startup=True)
        except BaseException:
            self._kill_all()
            raise
        return self

    def _start(self) -> _Worker:
        tasks_in, tasks_out = self._context.Pipe(duplex=False)
        results_in, results_out = self._context.Pipe(duplex=False)
        self._started += 1
        current = self._context.RawValue("q", -1)
        process = self._context.Process(
            target=worker_main,
            args=(self._spec, tasks_in, results_out, self._flag, current),
            name=f"choreo-worker-{self._started}",
            daemon=True,
        )
        process.start()
        # The child has its own copies of these ends now.
        tasks_in.close()
        results_out.close()
        return _Worker(self._started, process, tasks_out, results_in, current)

    def close(self) -> None:
        """Let every worker tear down its resources, then stop it; raise ResourceError if one failed."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)
        if any(proc.batches for proc in self._procs):
            self._flag.value = INTERRUPTED  # abandoned mid-run: let queued batches end fast
        errors: list[str] = []
        for proc in self._procs:
            with contextlib.suppress(OSError):
                proc.tasks.send_bytes(pickle.dumps(("close",), protocol=PROTOCOL))
        deadline = time.monotonic() + TEARDOWN_SECONDS
        for proc in self._procs:
            errors.extend(self._await_teardown(proc, deadline))
        self._kill_all()
        with contextlib.suppress(ResourceError):
            self._local.close()
        if errors:
            raise ResourceError("resource teardown failed: " + "; ".join(errors))

    def _close_at_exit(self) -> None:
        with contextlib.suppress(ResourceError):  # nobody is left to tell
            self.close()

    def _await_teardown(self, proc: _Worker, deadline: float) -> list[str]:
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0 or not proc.results.poll(remaining):
                    return [f"worker process {proc.pid} did not finish its teardown in time"]
                message = pickle.loads(proc.results.recv_bytes())
            except (EOFError, OSError):
                proc.process.join(1)
                if not proc.ready:
                    return []  # it never built anything
                code = describe_exit(proc.process.exitcode)
                return [f"worker process {proc.pid} died ({code}) before its teardown"]
            except Exception as exc:  # a chunk that does not unpickle: skip it
                del exc
                continue
            if message[0] == "closed":
                self._count_waits(message[2])
                self._count_times(message[3])
                return [f"worker process {proc.pid}: {e}" for e in message[1]]
            if message[0] == "log":
                logs.replay(message[1])

    def kill_workers(self) -> None:
        for proc in self._procs:
            pid = proc.process.pid
            if pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def _kill_all(self) -> None:
        for proc in self._procs:
            proc.process.join(0.5 if proc.process.exitcode is None else 0)
            if proc.process.is_alive():
                proc.process.kill()
                proc.process.join(5)
            for conn in (proc.tasks, proc.results):
                conn.close()
        self._procs = []

    # -- the batch stream -------------------------------------------------------------------

    def _tell_workers(self) -> None:
        if self._flag.value < self._level:
            self._flag.value = self._level

    def _heed_workers(self) -> None:
        """Take up a stop a worker raised (a step's KeyboardInterrupt, fail-fast); tell
        the workers again a level they may have written over (a worker's halt and an
        interruption at the same moment)."""
        level = self._flag.value
        if level > self._level:
            self._adopt(level)
        elif level < self._level:
            self._tell_workers()

    def _capacity(self) -> int:
        return sum(max(0, PER_WORKER - len(p.batches)) for p in self._procs if p.ready)

    def _in_flight(self) -> int:
        return sum(len(p.batches) for p in self._procs)

    def _submit(self, batch: Batch) -> None:
        try:
            data = pickled(("batch", batch.args), PROTOCOL)
        except RecursionError as exc:  # a value nested deeper than JSON input can be
            self._fail(batch, exc)
            return
        proc = min((p for p in self._procs if p.ready), key=lambda p: len(p.batches))
        proc.batches.append(batch)
        batch.ticket = proc
        try:
            proc.tasks.send_bytes(data)
        except OSError:
            self._bury(proc)

    def _wait(self, timeout: float) -> None:
        self._heed_workers()
        if not self._procs:
            # Every worker is gone and none could be started again: nothing can run.
            error = WorkerDied(f"no worker process is left: {self._startup_error}")
            while self._unsent:
                self._fail(self._unsent.popleft(), error)
            return
        by_handle: dict[Any, _Worker] = {p.results: p for p in self._procs}
        by_handle.update((p.process.sentinel, p) for p in self._procs)
        for ready in multiprocessing.connection.wait(list(by_handle), timeout):
            proc = by_handle[ready]
            if proc not in self._procs:
                continue  # buried while handling an earlier one
            if ready is proc.results:
                self._read(proc)
                while proc in self._procs and proc.results.poll():
                    self._read(proc)
            else:
                # Dead: read what it sent before dying, then fail what it still had.
                while proc in self._procs:
                    self._read(proc)

    def _read(self, proc: _Worker, *, startup: bool = False) -> None:
        """Read and handle one message from ``proc``; bury it at end of file."""
        try:
            message = pickle.loads(proc.results.recv_bytes())
        except (EOFError, OSError):
            if startup:
                proc.process.join(5)
                raise ResourceError(
                    f"worker process {proc.pid} died while starting "
                    f"({describe_exit(proc.process.exitcode)})"
                ) from None
            self._bury(proc)
            return
        kind = message[0]
        if kind == "log":
            logs.replay(message[1])
        elif kind == "chunk":
            _, elapsed, end, chunk = message
            batch = proc.batches[0]
            self._deliver(batch, chunk, elapsed)
            if end:
                proc.batches.popleft()
                if batch.unreported:  # the stop flag ended it before its last record
                    self._ended_early(batch, self._flag.value)
            # A worker raises the flag before it sends the chunk of the record that raised
            # it: read after the chunk, the flag is seen even when that was the last one.
            self._heed_workers()
        elif kind == "ready":
            proc.ready = True
        elif kind == "failed":
            if startup:
                raise ResourceError(message[1])
            self._startup_error = message[1]
            self._bury(proc, replace=False)

    def _bury(self, proc: _Worker, *, replace: bool = True) -> None:
        """A worker died: fail its in-flight records, resend what it had not started."""
        self._procs.remove(proc)
        proc.process.join(5)
        for conn in (proc.tasks, proc.results):
            conn.close()
        batches = proc.batches
        if batches:
            # The worker wrote the index of each record before running it: records before
            # that one ran (their results are lost), later ones never started.
            running = batches[0]
            current = proc.current.value
            unreported = [running.start + pos for pos in running.unreported]
            ran = sum(1 for index in unreported if index < current)
            died = f"worker process {proc.pid} died ({describe_exit(proc.process.exitcode)})"
            if ran:
                lost = WorkerDied(f"{died} after this record ran, before its result came back")
                self._fail(running, lost, ran)
            if current in unreported:
                self._fail(running, WorkerDied(f"{died} while running this record"), 1)
            for batch in reversed(batches):  # another worker runs what never started
                if not batch.done:
                    self._resubmit(batch)
        if replace and not self._level and not self._closed:
            self._procs.append(self._start())
