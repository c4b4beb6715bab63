"""`--executor thread` (the default): the Coordinator's own worker threads, async callables included."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from choreo_cli.coordinator import Coordinator, Step
    from choreo_cli.pipeline import Pipeline
    from choreo_cli.result import Result


class ThreadExecutor:
    """A thin adapter: ``workers`` threads of one Coordinator run the records.

    >>> with ThreadExecutor(load_pipeline("pipeline.yaml"), workers=8) as executor:  # doctest: +SKIP
    ...     results = list(executor.run_many(records))
    """

    def __init__(self, pipeline: Pipeline, *, workers: int, dry_run: bool = False) -> None:
        self.coordinator: Coordinator = pipeline.coordinator(workers=workers, dry_run=dry_run)

    @property
    def steps(self) -> Sequence[Step]:
        """The pipeline's steps, in order."""
        return self.coordinator.steps

    @property
    def interrupted(self) -> bool:
        """True once ``interrupt()`` was called."""
        return self.coordinator.interrupted

    def open(self, *, prebuild_workers: bool = False) -> ThreadExecutor:
        """Build the pipeline-scoped resources (and each thread's, with ``prebuild_workers``)."""
        self.coordinator.open(prebuild_workers=prebuild_workers)
        return self

    def run_many(self, records: Iterable[Any], ordered: bool = True) -> Iterator[Result]:
        """Yield exactly one Result per item; see ``Coordinator.run_many``."""
        return self.coordinator.run_many(records, ordered=ordered)

    def interrupt(self, reason: str = "interrupted") -> None:
        """No new record starts; records in flight stop before their next step."""
        self.coordinator.interrupt(reason)

    def close(self) -> None:
        """Stop the threads and close every resource."""
        self.coordinator.close()

    def __enter__(self) -> ThreadExecutor:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
