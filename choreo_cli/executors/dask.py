"""`--executor dask`: batches of records as tasks on a Dask cluster (one given, or a local one).

Each Dask worker process loads the pipeline file itself, once per run, and keeps the
loaded pipeline with its resources in a module-level cache until the run's end (a
teardown task per worker). The file must be at the same path on every worker, with
the same content, and its step modules importable there.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import queue
import threading
import time
from collections.abc import Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

from choreo_cli.errors import ResourceError
from choreo_cli.executors.base import PipelineSpec
from choreo_cli.executors.batching import Batch, BatchExecutor
from choreo_cli.executors.portable import encode_chunk, rebuild_exception
from choreo_cli.executors.runner import BatchArgs, BatchRunner

if TYPE_CHECKING:
    from choreo_cli.pipeline import Pipeline

# Batches in flight per worker thread: one running, the others hiding the round trips.
PER_THREAD = 3
CONNECT_TIMEOUT = "10s"


class DaskExecutor(BatchExecutor):
    """Runs records on a Dask cluster: ``scheduler`` is its address, or None for a local one.

    A local cluster has ``workers`` processes of one thread each, on 127.0.0.1 only.

    >>> pipeline = load_pipeline("pipeline.yaml")  # doctest: +SKIP
    >>> with DaskExecutor(pipeline, workers=2, scheduler="tcp://10.0.0.5:8786") as executor:  # doctest: +SKIP
    ...     results = list(executor.run_many(records))
    """

    # A task costs milliseconds of scheduling and round trips: batches are larger.
    target_seconds = 0.1
    max_batch = 4096
    batches_per_worker = 5

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
                # Tasks go to the workers as soon as submitted (the default holds all but
                # one per thread in the scheduler: a round trip between two batches).
                with dask.config.set({"distributed.scheduler.worker-saturation": "inf"}):
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
        future = client.submit(run_batch, self._spec, args, pure=False)
        batch.ticket = future
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
                    elapsed, chunk = pickle.loads(raw)
                except Exception as exc:
                    self._fail(batch, exc)
                else:
                    self._deliver(batch, chunk, elapsed)
            elif future.status == "cancelled" and self._interrupted:
                self._cancel(batch)
            else:
                self._fail(batch, _future_error(future))


def _future_error(future: Any) -> BaseException:
    try:
        exc = future.exception(timeout=1)
    except BaseException as failure:
        exc = failure
    if isinstance(exc, BaseException):
        return exc
    return rebuild_exception(("distributed", "TaskFailed", f"task {future.key} {future.status}"))


# -- on the Dask workers ------------------------------------------------------------------

_RUNNERS: dict[str, BatchRunner] = {}
_RUNNERS_LOCK = threading.Lock()


def _runner(spec: PipelineSpec) -> BatchRunner:
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(spec.run_id)
        if runner is None:
            runner = _RUNNERS[spec.run_id] = BatchRunner(spec)
        return runner


def open_runner(spec: PipelineSpec) -> list[str]:
    """Load the pipeline and build its resources on this worker; the error, if any."""
    try:
        _runner(spec)
    except BaseException as exc:
        from choreo_cli.errors import ChoreoError

        if isinstance(exc, ChoreoError):
            return [str(exc)]
        return [f"{type(exc).__name__}: {exc}"]
    return []


def run_batch(spec: PipelineSpec, batch: bytes) -> bytes:
    """Run one pickled batch on this worker; its portable results, pickled, with the time taken."""
    started = perf_counter()
    args: BatchArgs = pickle.loads(batch)
    chunk = _runner(spec).run(args)
    return encode_chunk(chunk, perf_counter() - started)


def close_runner(run_id: str) -> list[str]:
    """Tear down this worker's resources of run ``run_id``; the teardown errors."""
    with _RUNNERS_LOCK:
        runner = _RUNNERS.pop(run_id, None)
    return [] if runner is None else runner.close()
