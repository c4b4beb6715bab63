"""`--executor thread` (the default): the Coordinator's own worker threads, async callables included."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from choreo_cli.jsonl.line_runner import run_lines

if TYPE_CHECKING:
    from choreo_cli.core.coordinator import Coordinator
    from choreo_cli.core.result import Result
    from choreo_cli.core.step import Step
    from choreo_cli.core.timings import StepTimes
    from choreo_cli.pipeline.definitions import Pipeline


class ThreadExecutor:
    """A thin adapter: ``workers`` threads of one Coordinator run the records.

    >>> with ThreadExecutor(load_pipeline("pipeline.yaml"), workers=8) as executor:  # doctest: +SKIP
    ...     results = list(executor.run_many(records))
    """

    def __init__(
        self, pipeline: Pipeline, *, workers: int, dry_run: bool = False, timings: bool = True
    ) -> None:
        self.coordinator: Coordinator = pipeline.coordinator(
            workers=workers, dry_run=dry_run, timings=timings
        )

    @property
    def workers(self) -> int:
        """How many records run at once."""
        return self.coordinator.workers

    @property
    def steps(self) -> Sequence[Step]:
        """The pipeline's steps, in order."""
        return self.coordinator.steps

    @property
    def interrupted(self) -> bool:
        """True when the run in progress, or the last one, was interrupted (``interrupt()``
        or a step's KeyboardInterrupt): see ``Coordinator.interrupted``."""
        return self.coordinator.interrupted

    def open(self, *, prebuild_workers: bool = False) -> ThreadExecutor:
        """Build the pipeline-scoped resources (and each thread's, with ``prebuild_workers``)."""
        self.coordinator.open(prebuild_workers=prebuild_workers)
        return self

    def run_many(self, records: Iterable[Any], ordered: bool = True) -> Iterator[Result]:
        """Yield exactly one Result per item; see ``Coordinator.run_many``."""
        return self.coordinator.run_many(records, ordered=ordered)

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
        """Run JSON Lines given as lists of lines, one worker: see
        ``choreo_cli.jsonl.line_runner.run_lines``."""
        return run_lines(
            self.coordinator,
            batches,
            clean_line=clean_line,
            put=put,
            emit=emit,
            keep_raw=keep_raw,
            tally=tally,
        )

    def clean_steps(self) -> dict[str, str]:
        """The ``steps`` of a record that ran every step without an error."""
        return self.coordinator.clean_steps()

    def limit_figures(self) -> dict[str, dict[str, Any]]:
        """Per limit: its waits and time waited (every thread shares each limit whole)."""
        from choreo_cli.core.limits import limit_figures

        return limit_figures(self.coordinator.limits)

    def call_times(self) -> StepTimes:
        """How long each step's calls took, over the threads, so far."""
        return self.coordinator.call_times()

    def kill_workers(self) -> None:
        """Threads cannot be killed: a second signal exits the process, and them with it."""

    def interrupt(self, reason: str = "interrupted") -> None:
        """No new record starts; records in flight stop before their next step."""
        self.coordinator.interrupt(reason)

    def halt(self, reason: str) -> None:
        """Start no new record; records in flight finish. Records start only as the
        caller's input feeds them, so stopping the feed is all it takes here, but for the
        records already queued for the threads (at most ``workers``): those still start."""

    def close(self) -> None:
        """Stop the threads and close every resource."""
        self.coordinator.close()

    def __enter__(self) -> ThreadExecutor:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
