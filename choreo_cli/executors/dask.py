"""`--executor dask`: batches of records as tasks on a Dask cluster (one given, or a local one).

Each Dask worker process loads the pipeline file itself, once per run, and keeps the
loaded pipeline with its resources in a module-level cache until the run's end (a
teardown task per worker). The file must be at the same path on every worker, with
the same content, and its step modules importable there.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import mmap
import os
import pickle
import queue
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from choreo_cli.errors import ResourceError
from choreo_cli.executors import logs
from choreo_cli.executors.base import PipelineSpec, WorkerDied
from choreo_cli.executors.batching import Batch, BatchExecutor
from choreo_cli.executors.portable import Chunk, encode_chunk, rebuild_exception
from choreo_cli.executors.runner import BatchArgs, BatchRunner

if TYPE_CHECKING:
    from choreo_cli.pipeline import Pipeline

# Batches in flight per worker thread: one running, the others hiding the round trips.
PER_THREAD = 3
# How many times a batch Dask gave up on (KilledWorker) is submitted again as a new task.
KILLED_RESUBMITS = 1
CONNECT_TIMEOUT = "10s"

# Settings of the LocalCluster choreo starts itself (a cluster given by --scheduler keeps
# its owner's). On a local cluster the scheduler and the nannies share choreo's process
# (and its GIL) and the workers share the machine's cores with it: each setting below
# removes a periodic wake-up that took CPU (or the GIL) from the records, for a service
# nobody uses here (there is no dashboard). Measured on an idle cluster of 2 on a 2-core
# machine, all of them together: choreo's process 0.05-0.06 -> 0.01 of a core, each worker
# 0.04 -> 0.01. (Work stealing is left on: turning it off showed no measurable gain.)
LOCAL_CLUSTER_CONFIG = {
    # Tasks go to the workers as soon as submitted (the default holds all but one per
    # thread in the scheduler: a round trip between two batches).
    "distributed.scheduler.worker-saturation": "inf",
    # The statistical profiler samples the running batch's stack 100 times a second in
    # each worker: its event loop takes the GIL from the batch every 10 ms (about 0.025
    # of a core per worker when idle, more while a batch runs).
    "distributed.worker.profile.enabled": False,
    # Every server (the scheduler, each nanny, each worker) wakes 50 times a second to
    # time its own event loop, for an "unresponsive" log line that is silenced here
    # (0.035 of a core in choreo's process, 0.013 per worker).
    "distributed.admin.tick.interval": "1s",
    # psutil readings of each process's CPU, memory and network for the dashboard
    # (about 0.006 of a core in choreo's process).
    "distributed.admin.system-monitor.interval": "5s",
    # The nannies (in choreo's process) read each worker's memory 10 times a second to
    # spill, pause or restart it: once a second is enough for batches that hold no data
    # (about 0.01 of a core).
    "distributed.worker.memory.monitor-interval": "1s",
    # A worker that dies counts against every batch queued on it, not only the one it was
    # running; a batch run again skips the records its last attempt ran (run_batch), so
    # retrying is safe: the default of 3 would fail a batch queued on 4 dying workers.
    "distributed.scheduler.allowed-failures": 10,
}


class DaskExecutor(BatchExecutor):
    """Runs records on a Dask cluster: ``scheduler`` is its address, or None for a local one.

    A local cluster has ``workers`` processes of one thread each, on 127.0.0.1 only.

    >>> pipeline = load_pipeline("pipeline.yaml")  # doctest: +SKIP
    >>> with DaskExecutor(pipeline, workers=2, scheduler="tcp://10.0.0.5:8786") as executor:  # doctest: +SKIP
    ...     results = list(executor.run_many(records))
    """

    # A task costs milliseconds of scheduling and round trips in choreo's process (the
    # client's and, on a local cluster, the scheduler's): batches are larger. With trivial
    # steps a batch of 16,384 records is a few ms of work; smaller ones spend the parent's
    # CPU on tasks (4,096: 0.63-0.78 s for 200,000 JSON lines; 16,384: 0.51-0.62 s).
    target_seconds = 0.1
    max_batch = 16384
    # On top of the record count, a run_lines batch holds at most this many bytes of lines.
    max_batch_bytes = 8 << 20
    batches_per_worker = 3
    # Each round trip of the ramp-up costs tens of ms: sizes grow faster (1, 16, 256...).
    growth = 16

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        workers: int,
        overrides: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        scheduler: str | None = None,
    ) -> None:
        super().__init__(pipeline, workers=workers, overrides=overrides, dry_run=dry_run)
        self.scheduler = scheduler
        self._client: Any = None
        self._cluster: Any = None
        self._futures: dict[Any, Batch] = {}
        self._slots = workers * PER_THREAD
        self._closed = False
        # Finished futures, put there by Dask's callback thread.
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._tokens = itertools.count(1)  # names a batch across its attempts

    def open(self, *, prebuild_workers: bool = True) -> DaskExecutor:
        """Connect (or start a local cluster) and build the resources on every worker.

        Worker-scoped resources are always built here (``prebuild_workers`` is accepted
        for the Coordinator's signature); workers that join later build them on first use.

        Raises ResourceError when the scheduler cannot be reached or a worker's resource
        cannot be built.
        """
        if self._client is not None:
            return self
        import importlib

        # dask.distributed is only partly typed: its objects are handled as Any here.
        distributed: Any = importlib.import_module("distributed")
        Client, LocalCluster = distributed.Client, distributed.LocalCluster
        try:
            if self.scheduler is None:
                dask: Any = importlib.import_module("dask")
                # Read when the scheduler, nannies and workers start (the nannies pass
                # theirs on to the worker processes).
                with dask.config.set(LOCAL_CLUSTER_CONFIG):
                    self._cluster = LocalCluster(
                        n_workers=self.workers,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                        silence_logs=logging.ERROR,
                    )
                self._client = Client(self._cluster, set_as_default=False)
            else:
                self._client = Client(self.scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            self._shutdown()
            where = self.scheduler or "a local cluster"
            raise ResourceError(f"cannot connect to the Dask scheduler at {where}: {exc}") from None
        nthreads = self._client.nthreads()
        if not nthreads:
            self._shutdown()
            raise ResourceError(f"the Dask cluster at {self.scheduler} has no worker")
        self._slots = max(1, sum(nthreads.values())) * PER_THREAD
        self.workers = max(1, sum(nthreads.values()))
        # ctx.log lines logged on the workers, logged again here (executors/logs.py).
        self._client.subscribe_topic(logs.topic(self._spec.run_id), logs.replay_event)
        errors = self._on_each_worker(open_runner, self._spec)
        if errors:
            self._on_each_worker(close_runner, self._spec.run_id)
            self._shutdown()
            raise ResourceError("; ".join(errors))
        return self

    def close(self) -> None:
        """Tear down every worker's resources of this run; stop a local cluster."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        if self._client is not None:
            for future in self._futures:
                future.cancel()
            self._futures.clear()
            try:
                errors = self._on_each_worker(close_runner, self._spec.run_id)
            except Exception as exc:
                errors = [f"the teardown on the Dask workers failed: {type(exc).__name__}: {exc}"]
        self._shutdown()
        with contextlib.suppress(ResourceError):
            self._local.close()
        if errors:
            raise ResourceError("resource teardown failed: " + "; ".join(errors))

    def _on_each_worker(self, function: Any, argument: Any) -> list[str]:
        """Run ``function(argument)`` once on every worker's executor thread; the errors."""
        client = self._client
        assert client is not None
        addresses = list(client.nthreads())
        futures = [
            client.submit(function, argument, workers=[address], pure=False)
            for address in addresses
        ]
        errors: list[str] = []
        for address, outcome in zip(addresses, client.gather(futures), strict=True):
            errors.extend(f"Dask worker {address}: {message}" for message in outcome or ())
        return errors

    def _shutdown(self) -> None:
        client, self._client = self._client, None
        cluster, self._cluster = self._cluster, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()

    # -- the batch stream ---------------------------------------------------------------

    def _tell_workers(self) -> None:
        pass  # _wait cancels the futures (not from a signal handler: it talks to the scheduler)

    def _capacity(self) -> int:
        return self._slots - len(self._futures)

    def _in_flight(self) -> int:
        return len(self._futures)

    def _submit(self, batch: Batch) -> None:
        client = self._client
        assert client is not None and batch.args is not None
        # Pickled here: Dask would otherwise walk every record looking for futures in it.
        args = pickle.dumps(batch.args, protocol=pickle.HIGHEST_PROTOCOL)
        # A batch keeps its token when sent again: the new attempt finds what the last one
        # ran before its worker died (see run_batch).
        _, token, killed = batch.ticket or (None, next(self._tokens), 0)
        future = client.submit(run_batch, self._spec, args, token, pure=False)
        batch.ticket = (future, token, killed)
        self._futures[future] = batch
        future.add_done_callback(self._done.put)

    def _wait(self, timeout: float) -> None:
        if self._interrupted and self._futures:
            # Pending batches are cancelled; their records get a cancelled result here.
            futures = list(self._futures)
            for future in futures:
                if not future.done():
                    future.cancel()
                    self._cancel(self._futures.pop(future))
        if not self._futures:
            time.sleep(min(timeout, 0.01))
            return
        try:
            done = [self._done.get(timeout=timeout)]
        except queue.Empty:
            return
        with contextlib.suppress(queue.Empty):
            while True:
                done.append(self._done.get_nowait())
        done = [future for future in done if future in self._futures]  # not cancelled above
        finished = [future for future in done if future.status == "finished"]
        data: dict[Any, bytes] = {}
        if finished:
            # One round trip fetches every finished batch (one at a time below if it fails).
            with contextlib.suppress(Exception):
                # From the workers themselves when the cluster is local (not through the
                # scheduler: one hop less); a remote one may not let us reach its workers.
                fetched = self._client.gather(finished, direct=self._cluster is not None)
                data = dict(zip(finished, fetched, strict=True))
        for future in done:
            batch = self._futures.pop(future)
            if future.status == "finished":
                try:
                    raw = data[future] if future in data else future.result()
                    parts = [pickle.loads(part) for part in pickle.loads(raw)]
                except Exception as exc:
                    self._fail(batch, exc)
                else:
                    for elapsed, chunk in parts:
                        self._deliver(batch, chunk, elapsed)
            elif future.status == "cancelled" and self._interrupted:
                self._cancel(batch)
            else:
                self._failed(batch, _future_error(future))

    def _failed(self, batch: Batch, error: BaseException) -> None:
        """A batch's task failed: Dask gave up on it after its allowed failures (workers
        that died while it was queued or running there), or it could not run at all."""
        _, token, killed = batch.ticket
        if type(error).__name__ != "KilledWorker":
            self._fail(batch, error)
        elif killed < KILLED_RESUBMITS and not self._interrupted:
            # Workers died while it waited on them, or its attempts on other machines
            # could not see where the last one stopped: once more, as a new task.
            batch.ticket = (None, token, killed + 1)
            self._resubmit(batch)
        else:
            self._fail(batch, WorkerDied(f"Dask gave up on this record's batch: {error}"))


def _future_error(future: Any) -> BaseException:
    try:
        exc = future.exception(timeout=1)
    except BaseException as failure:
        exc = failure
    if isinstance(exc, BaseException):
        return exc
    return rebuild_exception(("distributed", "TaskFailed", f"task {future.key} {future.status}"))


# -- on the Dask workers ------------------------------------------------------------------

# A progress slot's record index once its batch has ended (every record ran).
BATCH_ENDED = 1 << 62
# How long a batch waits for a process that ran it before and stopped answering to be
# gone (the scheduler can learn of a death a moment before the process has ended).
DEATH_WAIT_SECONDS = 2.0
_HEADER = 128  # the worker's address, UTF-8, NUL-padded
_SLOTS = 64  # one per thread that runs batches (threads past that are not tracked)
_SLOT = struct.Struct("<qq")  # (batch token, index of the record running)


def progress_dir(run_id: str) -> Path:
    """Where this machine's Dask workers record what they are running, for run ``run_id``."""
    return Path(tempfile.gettempdir()) / f"choreo-dask-{run_id}"


class ProgressFile:
    """This worker process's record of what each of its threads is running, kept on disk.

    Per thread that runs batches, a slot of the memory-mapped file holds the batch's token
    and the index of the record running (writing it costs a store; what was written stays
    in the file when the process dies), and a journal file the batch's results as they are
    flushed. When Dask runs a batch again (its worker died), the new attempt reads what a
    dead process on this machine left: results before the record that was running come
    back from the journal, that record killed the worker and is not run again.
    """

    def __init__(self, run_id: str, address: str) -> None:
        directory = progress_dir(run_id)
        directory.mkdir(mode=0o700, exist_ok=True)
        self.path = directory / str(os.getpid())
        size = _HEADER + _SLOTS * _SLOT.size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._map[: _HEADER - 1] = address.encode()[: _HEADER - 1].ljust(_HEADER - 1, b"\0")
        for k in range(_SLOTS):
            _SLOT.pack_into(self._map, _HEADER + k * _SLOT.size, 0, -1)
        self._claimed = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._slots: list[_Slot] = []

    def slot(self) -> _Slot | None:
        """This thread's slot (None past the first 64 threads: those are not tracked)."""
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            with self._lock:
                k = self._claimed
                self._claimed += 1
            if k >= _SLOTS:
                return None
            slot = _Slot(self._map, k, Path(f"{self.path}.{k}"))
            self._slots.append(slot)
            self._local.slot = slot
        return slot

    def remove(self) -> None:
        """Remove this process's files, and those of dead processes; the folder once empty."""
        for slot in self._slots:
            slot.close()
        directory = self.path.parent
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                pid = entry.name.partition(".")[0]
                if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
                    os.unlink(entry.path)
            directory.rmdir()


class _Slot:
    """One thread's cells in the progress file, and its journal of flushed results."""

    __slots__ = ("_fd", "current", "journal", "token")

    def __init__(self, view: mmap.mmap, k: int, journal: Path) -> None:
        offset = _HEADER + k * _SLOT.size
        self.token = ctypes.c_int64.from_buffer(view, offset)
        self.current = ctypes.c_int64.from_buffer(view, offset + 8)
        self.journal = journal
        self._fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)

    def begin(self, token: int) -> None:
        # In this order: a death at any point leaves no journal that names another batch.
        self.current.value = -1
        os.ftruncate(self._fd, 0)
        self.token.value = token

    def write(self, part: bytes) -> None:
        os.write(self._fd, _FRAME.pack(self.token.value, len(part)) + part)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


_FRAME = struct.Struct("<qQ")  # (batch token, length) before each journalled part


class _Earlier:
    """What a dead attempt of a batch left: its journalled parts, the record it was running."""

    def __init__(self, parts: list[bytes], index: int, who: str) -> None:
        self.parts = parts
        self.index = index
        self.who = who

    def resume(self, args: BatchArgs) -> tuple[BatchArgs | None, Callable[[int], Any]]:
        """The batch's records left to run (None: none), and the errors of those not to run.

        Before the tail go the parts the dead attempt journalled, then (JSON lines) the
        clean records it ran since: a record that did not end clean is journalled at once,
        so the others were clean. Otherwise those records' results were lost with it.
        """
        start, positions, values, _ = args
        parse = type(values) is bytes
        count = values.count(b"\n") + 1 if parse else len(values)
        covered = sum(pickle.loads(part)[1][0] for part in self.parts)
        index, who = self.index, self.who
        ended = index == BATCH_ENDED

        def number(k: int) -> int:
            return start + (k if positions is None else positions[k])

        stop = count if ended else next((k for k in range(count) if number(k) == index), count)
        if parse and stop > covered:
            self.parts.append(encode_chunk((stop - covered, None, None, []), 0.0))
            covered = stop
        last_ran = number(stop - 1) if stop > covered else -1

        def died(record: int) -> BaseException | None:
            if record == index:
                return WorkerDied(f"{who} while running this record")
            if record <= last_ran:
                return WorkerDied(f"{who} after this record ran, before its result came back")
            return None

        return (_tail(args, covered) if covered < count else None), died


def _tail(args: BatchArgs, skip: int) -> BatchArgs:
    """``args`` without its first ``skip`` records."""
    start, positions, values, lines = args
    # JSON lines arrive joined with newlines (none is inside a line).
    values = b"\n".join(values.split(b"\n")[skip:]) if type(values) is bytes else values[skip:]
    lines = None if lines is None else lines[skip:]
    if positions is None:
        return (start + skip, None, values, lines)
    return (start, positions[skip:], values, lines)


def earlier_attempt(run_id: str, token: int) -> _Earlier | None:
    """What the furthest dead attempt of batch ``token`` on this machine left, or None
    (the common case: this is its first attempt, or the last ran on another machine)."""
    found: list[tuple[int, int, str, Path]] = []  # (index, pid, worker, journal)
    me = os.getpid()
    try:
        entries = [entry for entry in os.scandir(progress_dir(run_id)) if entry.name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            data = Path(entry.path).read_bytes()
        except OSError:
            continue
        running = [
            (k, index)
            for k in range(_SLOTS)
            for tag, index in [_SLOT.unpack_from(data, _HEADER + k * _SLOT.size)]
            if tag == token and index >= 0
        ]
        if not running or not _gone(pid):
            continue
        address = data[:_HEADER].rstrip(b"\0").decode(errors="replace")
        for k, index in running:
            found.append((index, pid, address, Path(f"{entry.path}.{k}")))
    if not found:
        return None
    index, pid, address, journal = max(found)
    parts: list[bytes] = []
    with contextlib.suppress(OSError):
        data = journal.read_bytes()
        at = 0
        while at + _FRAME.size <= len(data):
            tag, length = _FRAME.unpack_from(data, at)
            at += _FRAME.size
            if tag != token or at + length > len(data):
                break
            parts.append(data[at : at + length])
            at += length
    return _Earlier(parts, index, f"Dask worker {address} (process {pid}) died")


def _alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, dead but not yet reaped, is not alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")


def _gone(pid: int) -> bool:
    """True once process ``pid`` has ended, waiting a moment for one that is ending."""
    deadline = time.monotonic() + DEATH_WAIT_SECONDS
    while _alive(pid):
        if time.monotonic() > deadline:
            return False  # still running (a worker cut off from the scheduler): not a death
        time.sleep(0.02)
    return True


class _WorkerRun:
    """One run's pipeline on this worker, and its progress file."""

    __slots__ = ("log", "progress", "runner")

    def __init__(self, spec: PipelineSpec) -> None:
        from distributed import get_worker

        worker = get_worker()
        topic = logs.topic(spec.run_id)
        self.log = logs.install(
            lambda record: worker.log_event(topic, pickle.dumps(record)), spec.log_level
        )
        self.runner = BatchRunner(spec)
        self.progress = ProgressFile(spec.run_id, worker.address)


_RUNS: dict[str, _WorkerRun] = {}
_RUNS_LOCK = threading.Lock()


def _run_of(spec: PipelineSpec) -> _WorkerRun:
    with _RUNS_LOCK:
        run = _RUNS.get(spec.run_id)
        if run is None:
            run = _RUNS[spec.run_id] = _WorkerRun(spec)
        return run


def open_runner(spec: PipelineSpec) -> list[str]:
    """Load the pipeline and build its resources on this worker; the error, if any."""
    try:
        _run_of(spec)
    except BaseException as exc:
        from choreo_cli.errors import ChoreoError

        if isinstance(exc, ChoreoError):
            return [str(exc)]
        return [f"{type(exc).__name__}: {exc}"]
    return []


def run_batch(spec: PipelineSpec, batch: bytes, token: int = 0) -> bytes:
    """Run one pickled batch on this worker: its results, as a pickled list of parts, each
    a pickled (time taken, chunk) for consecutive records of the batch.

    ``token`` names the batch across attempts: when an earlier attempt's worker died,
    this one takes back the results it journalled and does not run again the records it
    ran or died running (those whose results were lost fail with WorkerDied).
    """
    started = perf_counter()
    args: BatchArgs | None = pickle.loads(batch)
    run = _run_of(spec)
    slot = run.progress.slot() if token else None
    if slot is None:
        chunk = run.runner.run(args)  # type: ignore[arg-type]
        return pickle.dumps([encode_chunk(chunk, perf_counter() - started)])
    slot.begin(token)
    parts: list[bytes] = []
    died = None
    earlier = earlier_attempt(spec.run_id, token)
    if earlier is not None:
        assert args is not None
        args, died = earlier.resume(args)
        parts = earlier.parts
        for part in parts:
            slot.write(part)

    def flush(chunk: Chunk) -> None:
        nonlocal started
        now = perf_counter()
        part = encode_chunk(chunk, now - started)
        started = now
        slot.write(part)
        parts.append(part)

    if args is not None:
        flush(run.runner.run(args, flush, slot.current, died=died, eager=True))
    slot.current.value = BATCH_ENDED
    return pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL)


def close_runner(run_id: str) -> list[str]:
    """Tear down this worker's resources of run ``run_id``; the teardown errors."""
    with _RUNS_LOCK:
        run = _RUNS.pop(run_id, None)
    if run is None:
        return []
    run.progress.remove()
    try:
        return run.runner.close()
    finally:
        logs.uninstall(run.log)
