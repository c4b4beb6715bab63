"""Parent side of `--executor dask` (choreo's process): start or reach a cluster, submit batches.

Each batch is a task running ``dask_worker.run_batch``. Each Dask worker process loads
the pipeline file itself, once per run, and keeps the loaded pipeline with its
resources until the run's end (``dask_worker``: a teardown task per worker). The file
must be at the same path on every worker, with the same content, and its step modules
importable there.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import pickle
import queue
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from choreo_cli.errors import ResourceError
from choreo_cli.executors import logs
from choreo_cli.executors.base import RUNNING, WorkerDied
from choreo_cli.executors.batching import Batch, BatchExecutor, pickled
from choreo_cli.executors.dask_attempts import progress_dir, sweep
from choreo_cli.executors.dask_worker import (
    close_runner,
    open_runner,
    run_batch,
    run_report,
    stop_run,
)
from choreo_cli.executors.portable import rebuild_exception

if TYPE_CHECKING:
    from choreo_cli.pipeline.definitions import Pipeline

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
    # running; a batch run again skips the records its last attempt ran (dask_worker), so
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
        fail_fast: bool = False,
    ) -> None:
        super().__init__(
            pipeline, workers=workers, overrides=overrides, dry_run=dry_run, fail_fast=fail_fast
        )
        self.scheduler = scheduler
        self._client: Any = None
        self._cluster: Any = None
        self._futures: dict[Any, Batch] = {}
        self._slots = workers * PER_THREAD
        self._closed = False
        # Finished futures, put there by Dask's callback thread.
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._tokens = itertools.count(1)  # names a batch across its attempts
        self._told = RUNNING  # the stop level the workers were told

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
        if self.scheduler is not None:
            _check_address(self.scheduler)
        try:
            if self.scheduler is None:
                _quiet_resource_tracker()
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
                        # The scheduler serves HTTP (metrics, health) even without a
                        # dashboard, by default on port 8787: a second choreo run at the
                        # same time warned on stderr that the port was taken.
                        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                        # choreo reports a worker's death per record itself; Dask's own
                        # lines about it ("Couldn't gather keys") would only add noise.
                        silence_logs=logging.CRITICAL,
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
        # Never closed (a script without ``with``): a local cluster's progress folder
        # (choreo-dask-*, in the temporary directory) was left behind. At exit the
        # workers' teardown can no longer be asked for (Dask's client has stopped), but
        # a local cluster is still closed and its folder swept.
        atexit.register(self._close_at_exit)
        return self

    def kill_workers(self) -> None:
        # Nothing to do: the worker processes of a local cluster end with their nannies,
        # which live in this process (a step that never returns does not keep one alive);
        # those of a cluster given by --scheduler are not choreo's.
        pass

    def close(self) -> None:
        """Tear down every worker's resources of this run; stop a local cluster."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)
        errors: list[str] = []
        if self._client is not None:
            for future in self._futures:
                future.cancel()
            self._futures.clear()
            with contextlib.suppress(Exception):  # the figures only: not worth failing
                for figures, times in self._from_each_worker(run_report, self._spec.run_id):
                    self._count_waits(figures)
                    if times is not None:
                        self._count_times(times)
            try:
                errors = self._on_each_worker(close_runner, self._spec.run_id)
            except Exception as exc:
                errors = [f"the teardown on the Dask workers failed: {type(exc).__name__}: {exc}"]
        self._shutdown()
        with contextlib.suppress(ResourceError):
            self._local.close()
        if errors:
            raise ResourceError("resource teardown failed: " + "; ".join(errors))

    def _close_at_exit(self) -> None:
        with contextlib.suppress(ResourceError):  # nobody is left to tell
            self.close()

    def _from_each_worker(self, function: Any, argument: Any) -> list[Any]:
        """What ``function(argument)`` returned on each worker."""
        client = self._client
        assert client is not None
        futures = [
            client.submit(function, argument, workers=[address], pure=False)
            for address in client.nthreads()
        ]
        return list(client.gather(futures))

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
            # Its workers are gone: what they did not sweep themselves (one that was
            # killed as the cluster closed, a teardown that never ran) is swept here.
            sweep(progress_dir(self._spec.run_id))

    # -- the batch stream ---------------------------------------------------------------

    def _tell_workers(self) -> None:
        pass  # _wait tells them (not from a signal handler: it talks to the scheduler)

    def _stop_workers(self) -> None:
        """Tell every worker the run's stop level: each starts no new record of the run
        (checked before each record, also in the middle of a batch) and, when interrupted,
        stops its records in flight before their next step. Their batches then come back
        at once with what ran; the parent cancels the rest. Should the workers be out of
        reach, the batches not yet back are cancelled instead (some of their records may
        have run)."""
        level = self._told = self._level
        try:
            self._client.run(stop_run, self._spec.run_id, level, on_error="ignore")
        except Exception:
            for future in list(self._futures):
                if not future.done():
                    future.cancel()
                    self._cancel(self._futures.pop(future))

    def _capacity(self) -> int:
        return self._slots - len(self._futures)

    def _in_flight(self) -> int:
        return len(self._futures)

    def _submit(self, batch: Batch) -> None:
        client = self._client
        assert client is not None and batch.args is not None
        # Pickled here: Dask would otherwise walk every record looking for futures in it.
        try:
            args = pickled(batch.args)
        except RecursionError as exc:  # a value nested deeper than JSON input can be
            self._fail(batch, exc)
            return
        # A batch keeps its token when sent again: the new attempt finds what the last one
        # ran before its worker died (see dask_worker.run_batch).
        _, token, killed = batch.ticket or (None, next(self._tokens), 0)
        future = client.submit(run_batch, self._spec, args, token, pure=False)
        batch.ticket = (future, token, killed)
        self._futures[future] = batch
        future.add_done_callback(self._done.put)

    def _wait(self, timeout: float) -> None:
        if self._level > self._told and self._futures:
            self._stop_workers()
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
                    level, parts = pickle.loads(raw)
                    parts = [pickle.loads(part) for part in parts]
                except Exception as exc:
                    self._fail(batch, exc)
                else:
                    for elapsed, chunk in parts:
                        self._deliver(batch, chunk, elapsed)
                    if batch.unreported:  # the stop flag ended it before its last record
                        self._ended_early(batch, level)
                    elif level > self._level:
                        self._adopt(level)
            elif future.status == "cancelled" and self._level:
                self._cancel(batch)
            else:
                self._failed(batch, _future_error(future))

    def _failed(self, batch: Batch, error: BaseException) -> None:
        """A batch's task failed: Dask gave up on it after its allowed failures (workers
        that died while it was queued or running there), or it could not run at all."""
        _, token, killed = batch.ticket
        if type(error).__name__ != "KilledWorker":
            self._fail(batch, error)
        elif killed < KILLED_RESUBMITS and not self._level:
            # Workers died while it waited on them, or its attempts on other machines
            # could not see where the last one stopped: once more, as a new task.
            batch.ticket = (None, token, killed + 1)
            self._resubmit(batch)
        else:
            self._fail(batch, WorkerDied(f"Dask gave up on this record's batch: {error}"))


def _quiet_resource_tracker() -> None:
    """The nannies' semaphores are counted by multiprocessing's resource tracker, a process
    of its own that outlives choreo when a second signal (or a kill) ends it at once; it
    then warns of "leaked semaphore objects" on stderr. It takes its warning filters from
    ``sys.warnoptions`` when it starts (multiprocessing starts it on first use)."""
    option = "ignore::UserWarning:multiprocessing.resource_tracker"
    if option not in sys.warnoptions:
        sys.warnoptions.append(option)


def _check_address(address: str) -> None:
    """Raise ResourceError unless ``address`` reads as a Dask scheduler's address.

    Checked before any Client exists: a Client given an address it cannot parse fails,
    and then hangs for 20 s closing itself when it is collected, and prints a traceback.
    """
    from distributed.comm.addressing import get_address_host_port

    try:
        host, port = get_address_host_port(address)
        if not host:
            raise ValueError("no host in the address")
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
    except ValueError as exc:
        raise ResourceError(
            f"{address!r} is not a Dask scheduler address ({exc}): give one like "
            "tcp://10.0.0.5:8786"
        ) from None


def _future_error(future: Any) -> BaseException:
    try:
        exc = future.exception(timeout=1)
    except BaseException as failure:
        exc = failure
    if isinstance(exc, BaseException):
        return exc
    return rebuild_exception(("distributed", "TaskFailed", f"task {future.key} {future.status}"))
