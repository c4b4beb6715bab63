"""Worker side of `--executor process` (in each worker process): load the pipeline, run batches.

``worker_main`` is the worker program: multiprocessing pickles it by module path and
the spawned interpreter imports this module to run it, never the parent's
(``executors/process.py``). The two talk over two pipes of pickled tuples:

- parent -> worker: ``("batch", args)`` (see ``runner.BatchArgs``), ``("close",)``;
- worker -> parent: ``("ready", pid)`` or ``("failed", message)`` once its resources
  are built or not, ``("chunk", seconds, last, chunk)`` for results (``last`` on a
  batch's final chunk), ``("log", record)`` for ``ctx.log`` lines, and
  ``("closed", errors, limit figures)`` after its teardown.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import threading
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any

from choreo_cli.core.limits import limit_figures
from choreo_cli.errors import ChoreoError
from choreo_cli.executors import logs
from choreo_cli.executors.base import INTERRUPTED
from choreo_cli.executors.portable import Chunk, encode_chunk
from choreo_cli.executors.runner import BatchRunner

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from choreo_cli.executors.base import PipelineSpec

# How long a worker whose parent died waits for its record and teardown to end.
ORPHAN_SECONDS = 5.0
PROTOCOL = pickle.HIGHEST_PROTOCOL


def worker_main(
    spec: PipelineSpec,
    tasks: Connection,
    results: Connection,
    flag: Any,
    current: Any,
) -> None:
    """A worker process: load the pipeline, build resources, run batches until told to close.

    ``flag`` (shared memory) is the run's stop flag (see ``BatchRunner``): read before
    each record, raised by the parent (to interrupt or halt) or by a worker; ``current``
    (shared memory) holds the index of the record running, for the parent to read if
    this dies.
    """
    # This is the worker program's own main, not choreo's: the parent's signal handlers
    # (cli/) do not run here, so the worker sets its own. The parent coordinates
    # interruption: a Ctrl-C on the terminal reaches the whole process group, and a
    # worker must finish its records' results (told so through ``flag``), not die.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    outbox = _Outbox(results)
    logs.install(outbox.log, spec.log_level)
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    built: list[BatchRunner] = []  # the runner, once its resources are built
    # Batches are read on their own thread so that the parent's sends never wait for
    # this worker to finish a batch (both sides writing a full pipe would deadlock). It
    # starts first: a parent killed while resources are being built is noticed too.
    threading.Thread(target=_receive, args=(tasks, inbox, built), daemon=True).start()
    try:
        runner = BatchRunner(spec, stop=flag)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            outbox.send(pickle.dumps(("failed", _startup_message(exc))))
        return
    built.append(runner)
    threading.Thread(target=_watch, args=(flag, runner), daemon=True).start()
    try:
        outbox.send(pickle.dumps(("ready", os.getpid())))
        while True:
            message = inbox.get()
            if message is None:
                break
            started = perf_counter()

            def flush(chunk: Chunk) -> None:
                nonlocal started
                now = perf_counter()
                outbox.send(encode_chunk(chunk, "chunk", now - started, False))
                started = now

            rest = runner.run(message, flush, current)
            outbox.send(encode_chunk(rest, "chunk", perf_counter() - started, True))
    except OSError:
        runner.interrupt("the parent process is gone")
    errors = runner.close()
    with contextlib.suppress(OSError):
        coordinator = runner.coordinator
        closed = ("closed", errors, limit_figures(coordinator.limits), coordinator.call_times())
        outbox.send(pickle.dumps(closed))


class _Outbox:
    """A worker's results pipe, written by the batch loop and by any thread that logs."""

    __slots__ = ("_connection", "_lock")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._lock:
            self._connection.send_bytes(data)

    def log(self, attributes: dict[str, Any]) -> None:
        self.send(pickle.dumps(("log", attributes), protocol=PROTOCOL))


def _receive(tasks: Connection, inbox: queue.SimpleQueue[Any], built: list[BatchRunner]) -> None:
    while True:
        try:
            message = pickle.loads(tasks.recv_bytes())
        except (EOFError, OSError):
            # The parent is gone (killed): nobody will read a result. The record running
            # stops before its next step and resources are torn down, unless a step (or
            # a resource being built) holds on: then this process ends anyway. os._exit,
            # from this thread, as the main one may be stuck in that step; this process
            # is the worker program, whose exit is its own (cli/ decides only choreo's).
            for runner in built:
                runner.interrupt("the parent process is gone")
            inbox.put(None)
            time.sleep(ORPHAN_SECONDS)
            os._exit(1)
        if message[0] == "close":
            inbox.put(None)
            return
        inbox.put(message[1])


def _watch(flag: Any, runner: BatchRunner) -> None:
    """An interruption stops the record in flight before its next step (the runner
    checks the flag itself before each record)."""
    while flag.value < INTERRUPTED:
        time.sleep(0.02)
    runner.interrupt()


def _startup_message(exc: BaseException) -> str:
    if isinstance(exc, ChoreoError):
        return str(exc)
    return f"worker process {os.getpid()} could not start: {type(exc).__name__}: {exc}"
