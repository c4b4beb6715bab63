"""Worker side of `--executor dask` (on each Dask worker): load the pipeline per run, run batches.

The parent (``executors/dask.py``) submits the functions below as tasks; Dask pickles
them by module path, so a worker imports this module, never the parent's. A worker
process keeps one loaded pipeline with its resources per run in ``_RUNS`` (built by
``open_runner`` or a first batch, reused by every batch, torn down by ``close_runner``),
and records its progress on disk (``dask_attempts``) so that a retry of a batch whose
worker died neither loses a record nor runs one twice.
"""

from __future__ import annotations

import pickle
import threading
from time import perf_counter
from typing import TYPE_CHECKING, Any

from choreo_cli.errors import ChoreoError
from choreo_cli.executors import logs
from choreo_cli.executors.base import INTERRUPTED, PipelineSpec
from choreo_cli.executors.dask_attempts import BATCH_ENDED, ProgressFile, earlier_attempt
from choreo_cli.executors.portable import encode_chunk, encode_entry
from choreo_cli.executors.runner import BatchArgs, BatchRunner

if TYPE_CHECKING:
    from choreo_cli.core.timings import StepTimes


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


# By run id: a Dask worker process outlives a run and may serve several choreo runs at once.
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
        if isinstance(exc, ChoreoError):
            return [str(exc)]
        return [f"{type(exc).__name__}: {exc}"]
    return []


def run_batch(spec: PipelineSpec, batch: bytes, token: int = 0) -> bytes:
    """Run one pickled batch on this worker: its results, as a pickled (stop level, parts):
    the run's stop flag on this worker once the batch ended (see ``BatchRunner``: the batch
    ends before its last record once it is set), and parts, each a pickled (time taken,
    chunk) for consecutive records of the batch.

    ``token`` names the batch across attempts: when an earlier attempt's worker died,
    this one takes back the results it journalled and does not run again the records it
    ran; the record it died running fails with WorkerDied.
    """
    started = perf_counter()
    args: BatchArgs | None = pickle.loads(batch)
    run = _run_of(spec)
    stop = run.runner.stop
    slot = run.progress.slot() if token else None
    if slot is None:
        chunk = run.runner.run(args)  # type: ignore[arg-type]
        return pickle.dumps((stop.value, [encode_chunk(chunk, perf_counter() - started)]))
    slot.begin(token)
    parts: list[bytes] = []
    died = None
    done = 0  # the records an earlier attempt ran, whose results it journalled
    earlier = earlier_attempt(spec.run_id, token)
    if earlier is not None:
        assert args is not None
        args, died = earlier.resume(args)
        parts = earlier.parts
        done = earlier.done
        if earlier.chunk is not None:  # journalled again: a death of this attempt keeps them
            slot.write(0, encode_entry(earlier.chunk))
    write = slot.write

    def journal(position: int, entry: tuple[Any, ...]) -> None:
        # Each record's results before the next record starts, but for records that ran
        # clean with an empty bag (their count tells them): a store in a memory map.
        write(done + position, encode_entry(entry))

    ran = done
    if args is not None:
        chunk = run.runner.run(args, current=slot.current, died=died, journal=journal)
        ran += chunk[0]
        parts.append(encode_chunk(chunk, perf_counter() - started))
    write(ran, b"")  # the end, at the number of records that ran (its stop flag may stop it)
    slot.current.value = BATCH_ENDED
    return pickle.dumps((stop.value, parts), protocol=pickle.HIGHEST_PROTOCOL)


def stop_run(run_id: str, level: int) -> None:
    """choreo halted (HALTED) or interrupted (INTERRUPTED) run ``run_id``: this worker
    starts no new record of it, and when interrupted its records in flight stop before
    their next step. Run through ``Client.run`` on the worker's event loop, while batches
    run on its threads."""
    with _RUNS_LOCK:
        run = _RUNS.get(run_id)
    if run is None:
        return
    if level >= INTERRUPTED:
        run.runner.interrupt("interrupted by choreo")
    else:
        run.runner.halt()


def run_report(run_id: str) -> tuple[dict[str, dict[str, Any]], StepTimes | None]:
    """This worker's waits per limit in run ``run_id`` (see core/limits.py) and its call
    times (core/timings.py; None: it ran no record of the run)."""
    from choreo_cli.core.limits import limit_figures

    with _RUNS_LOCK:
        run = _RUNS.get(run_id)
    if run is None:
        return {}, None
    coordinator = run.runner.coordinator
    return limit_figures(coordinator.limits), coordinator.call_times()


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
