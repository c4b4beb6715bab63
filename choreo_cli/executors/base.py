"""The executor interface, and what every executor that runs records elsewhere shares."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from choreo_cli.errors import ChoreoError
from choreo_cli.executors import logs

if TYPE_CHECKING:
    from choreo_cli.core.context import PrecheckErrors
    from choreo_cli.core.result import Result
    from choreo_cli.core.step import Step
    from choreo_cli.core.timings import StepTimes


class Executor(Protocol):
    """Runs records somewhere; the Coordinator's per-record semantics are the same everywhere.

    ``ThreadExecutor`` runs them on one Coordinator's threads; the batch executors in
    worker processes or on a Dask cluster. Use as a context manager::

        with build_executor("process", pipeline, workers=2) as executor:
            for result in executor.run_many(records, ordered=True):
                ...
    """

    @property
    def workers(self) -> int:
        """How many records run at once (for Dask, known once connected)."""
        ...

    @property
    def steps(self) -> Sequence[Step]:
        """The pipeline's steps, in order (for the summary)."""
        ...

    def clean_steps(self) -> dict[str, str]:
        """The ``steps`` of a record that ran every step without an error."""
        ...

    @property
    def interrupted(self) -> bool:
        """True once the run was interrupted: ``interrupt()``, or a step raised
        KeyboardInterrupt (in any worker). Not after ``halt()``."""
        ...

    def open(self, *, prebuild_workers: bool = False) -> Any:
        """Start the workers and build resources; raises ResourceError when one fails.

        With ``prebuild_workers`` worker-scoped resources are built now too (executors
        whose workers are processes always build them at a worker's start).
        """
        ...

    def run_many(self, records: Iterable[Any], ordered: bool = True) -> Iterator[Result]:
        """Yield exactly one Result per item, in input order unless ``ordered=False``."""
        ...

    def run_lines(
        self,
        batches: Iterable[list[bytes]],
        *,
        clean_line: bytes,
        put: Callable[[bytes], Any],
        emit: Callable[[Result], Any],
        keep_raw: bool = False,
        tally: Callable[[Result], Any] | None = None,
    ) -> Iterator[int]:
        """Run JSON Lines given as lists of lines; only records with errors come back as
        Results (see ``choreo_cli.jsonl.line_runner.run_lines``). The thread executor
        offers it with one worker, the others with any number."""
        ...

    def interrupt(self, reason: str = "interrupted") -> None:
        """No new record starts, and records in flight stop before their next step; safe
        to call from a signal handler."""
        ...

    def halt(self, reason: str) -> None:
        """No new record starts (``--fail-fast``, a failure budget); records in flight
        finish. Every worker checks before each record, also in the middle of a batch;
        records read but not started get a cancelled Result ("interrupted before step
        ..."). Not an interruption: ``interrupted`` stays False. Safe from a signal handler.

        The thread executor stops only what reads its input: records it queued for its
        threads (at most ``workers``) still start.
        """
        ...

    def limit_figures(self) -> dict[str, dict[str, Any]]:
        """Per limit: ``{waits, wait_seconds, workers, share}`` (for the summary; after
        ``close()`` for executors whose workers report at their teardown)."""
        ...

    def call_times(self) -> StepTimes:
        """How long each step's calls took (core/timings.py): so far with threads; the
        process and Dask workers report theirs when they close (after ``close()``)."""
        ...

    def kill_workers(self) -> None:
        """After a second signal: end worker processes at once (threads end with choreo)."""
        ...

    def close(self) -> None:
        """Stop the workers and tear down resources; raises ResourceError when a teardown failed."""
        ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc_info: object) -> None: ...


class ExecutorUnavailable(ChoreoError):
    """An executor cannot be used here (unknown name, a missing optional dependency)."""


class WorkerDied(ChoreoError):
    """The worker process running a record died before it reported the record's result."""


# What a worker's stop flag says (the parent's and the workers' shared word): go on; start
# no new record (``halt``); and also stop the records in flight before their next step
# (``interrupt``). It only ever rises within a run.
RUNNING = 0
HALTED = 1
INTERRUPTED = 2


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """What a worker needs to load the pipeline itself: no callable crosses a process boundary.

    ``digest`` is the file's content hash: a worker whose copy differs refuses to run
    (Dask workers on other machines read their own copy of the file).
    """

    path: str
    overrides: Mapping[str, Any]
    dry_run: bool
    digest: str
    run_id: str
    # choreo's own log level: workers send the step loggers' lines from it up.
    log_level: int = logging.WARNING
    # --fail-fast: a worker whose record did not succeed starts no other record itself,
    # without waiting for choreo to tell it (its batch's later records are not run).
    fail_fast: bool = False
    # --limit NAME=RATE (calls per second), and how many workers share each limit equally.
    limit_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
    limit_workers: int = 1
    # The pipeline's precheck_errors, --precheck-errors included.
    precheck_errors: PrecheckErrors = "skip"

    @classmethod
    def for_file(
        cls,
        path: str | os.PathLike[str],
        *,
        overrides: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        fail_fast: bool = False,
        limit_rates: Mapping[str, float] | None = None,
        limit_workers: int = 1,
        precheck_errors: PrecheckErrors = "skip",
    ) -> PipelineSpec:
        """The spec of a pipeline file, with a fresh run id (resources are built per run)."""
        absolute = Path(path).resolve()
        return cls(
            path=str(absolute),
            overrides=dict(overrides or {}),
            dry_run=dry_run,
            digest=file_digest(absolute),
            run_id=os.urandom(8).hex(),
            log_level=logs.forwarded_level(),
            fail_fast=fail_fast,
            limit_rates=dict(limit_rates or {}),
            limit_workers=limit_workers,
            precheck_errors=precheck_errors,
        )


def file_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's content."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def describe_exit(exitcode: int | None) -> str:
    """'exit code 3' or 'killed by signal SIGKILL', for a dead worker's error message.

    >>> describe_exit(-9)
    'killed by signal SIGKILL'
    """
    import signal

    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"
