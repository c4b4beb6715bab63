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

from choreo_cli.errors import ChoreoError
from choreo_cli.executors import logs
from choreo_cli.executors.base import PipelineSpec
from choreo_cli.executors.dask_attempts import BATCH_ENDED, ProgressFile, earlier_attempt
from choreo_cli.executors.portable import Chunk, encode_chunk, merge_chunks
from choreo_cli.executors.runner import BatchArgs, BatchRunner


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

    # Journalled as they come (a record that did not end clean comes alone), returned as
    # one part: the parent unpickles a part per batch, not one per such record.
    chunks: list[Chunk] = []
    elapsed = 0.0

    def flush(chunk: Chunk) -> None:
        nonlocal started, elapsed
        now = perf_counter()
        slot.write(encode_chunk(chunk, now - started))
        elapsed += now - started
        started = now
        chunks.append(chunk)

    if args is not None:
        flush(run.runner.run(args, flush, slot.current, died=died, eager=True))
    slot.current.value = BATCH_ENDED
    if chunks:
        parts.append(encode_chunk(merge_chunks(chunks), elapsed))
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
