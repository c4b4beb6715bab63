"""What a pipeline file defines: its steps, callables and resources, as read and checked."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from choreo_cli.errors import PipelineError, StepDefinitionError
from choreo_cli.pipeline.problems import Problem

if TYPE_CHECKING:
    from choreo_cli.core.budget import FailureBudget
    from choreo_cli.core.context import PrecheckErrors
    from choreo_cli.core.coordinator import Coordinator
    from choreo_cli.core.limits import Limit
    from choreo_cli.core.resources import ResourceSpec
    from choreo_cli.core.retry import RetryPolicy
    from choreo_cli.core.step import Step
    from choreo_cli.pipeline.limits import LimitDefinition


@dataclass(frozen=True)
class CallDefinition:
    """A callable named in the file: its reference text, ``with:`` keywords and position.

    ``target`` is the imported object, or None when the file was read without importing.
    """

    reference: str
    with_: Mapping[str, Any]
    target: Any
    file: str
    line: int
    column: int

    def problem(self, message: str) -> Problem:
        """A problem positioned at this reference."""
        return Problem(self.file, self.line, self.column, message)


@dataclass(frozen=True)
class StepDefinition:
    """One step as written in the file (after interpolation and ``defaults:``)."""

    name: str
    job: CallDefinition
    precheck: CallDefinition | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None
    description: str | None = None
    # The retry's ``on:`` entries as written: read without importing, ``retry.on`` lacks
    # the 'module:Class' ones (for ``choreo show``). Empty when ``on:`` is not given.
    retry_on: tuple[str, ...] = ()
    # The limits (by name, as ``limits:`` defines them) its job's and its precheck's calls
    # wait for: the step's ``limit:`` and each call's own.
    job_limits: tuple[str, ...] = ()
    precheck_limits: tuple[str, ...] = ()

    def to_step(self, limits: Mapping[str, Limit] | None = None) -> Step:
        """The coordinator's Step; its callables are named by their reference text.

        ``limits``: the run's limit objects by name (``build_limits``).
        """
        from choreo_cli.core.coordinator import Step

        precheck = self.precheck
        built = limits or {}
        return Step(
            name=self.name,
            job=_target(self.job),
            precheck=None if precheck is None else _target(precheck),
            job_with=self.job.with_,
            precheck_with=None if precheck is None else precheck.with_,
            job_name=self.job.reference,
            precheck_name=None if precheck is None else precheck.reference,
            retry=self.retry,
            timeout=self.timeout,
            description=self.description,
            job_limits=tuple(built[name] for name in self.job_limits if name in built),
            precheck_limits=tuple(built[name] for name in self.precheck_limits if name in built),
        )


@dataclass(frozen=True)
class ResourceDefinition:
    """A resource as written in the file: ``factory(**with)``, built per pipeline or per worker."""

    name: str
    factory: CallDefinition
    scope: Literal["pipeline", "worker"] = "pipeline"

    def to_spec(self) -> ResourceSpec:
        """The coordinator's ResourceSpec (the factory is not called here)."""
        from choreo_cli.core.resources import ResourceSpec

        return ResourceSpec(
            name=self.name,
            factory=_target(self.factory),
            kwargs=self.factory.with_,
            scope=self.scope,
            factory_name=self.factory.reference,
        )


@dataclass(frozen=True)
class Pipeline:
    """A loaded pipeline file; ``coordinator()`` turns it into a ready Coordinator.

    Examples:
        >>> pipeline = load_pipeline("pipeline.yaml")  # doctest: +SKIP
        >>> with pipeline.coordinator(workers=4) as coordinator:  # doctest: +SKIP
        ...     results = list(coordinator.run_many(records))
    """

    path: Path
    name: str | None
    description: str | None
    workers: int
    python_path: tuple[Path, ...]
    values: Mapping[str, Any]
    steps: tuple[StepDefinition, ...]
    resources: tuple[ResourceDefinition, ...] = ()
    warnings: tuple[Problem, ...] = field(default=(), compare=False)
    # ``max_workers:``: the most records at once (``--workers`` above it is refused), and
    # where the file says so, for that message; None when the file sets no maximum.
    max_workers: int | None = None
    max_workers_at: Problem | None = field(default=None, compare=False)
    # ``halt:``: the failure budget, or None when the file has none.
    halt: FailureBudget | None = None
    # ``limits:``, rates overridden by ``with_rates`` (``--limit NAME=RATE``) included.
    limits: tuple[LimitDefinition, ...] = ()
    # The overridden rates (calls per second) by name: workers that load the file again
    # apply them too.
    rate_overrides: Mapping[str, float] = field(default_factory=dict)
    # ``precheck_errors:``: what a precheck raising something other than Skip or Cancel
    # does, "skip" its job (the default) or "fail" the record; ``--precheck-errors``
    # replaces it (``with_precheck_errors``).
    precheck_errors: PrecheckErrors = "skip"

    def with_rates(self, rates: Mapping[str, float]) -> Pipeline:
        """This pipeline with the rates of some limits replaced (``--limit NAME=RATE``);
        raises ValueError, for people, for a name ``limits:`` does not define."""
        from choreo_cli.pipeline.limits import override_rates

        if not rates:
            return self
        limits = override_rates(self.limits, rates, file=str(self.path))
        return replace(self, limits=limits, rate_overrides={**self.rate_overrides, **rates})

    def with_precheck_errors(self, mode: PrecheckErrors | None) -> Pipeline:
        """This pipeline with ``precheck_errors`` replaced (``--precheck-errors``); None
        keeps the file's."""
        if mode is None or mode == self.precheck_errors:
            return self
        return replace(self, precheck_errors=mode)

    def coordinator(
        self,
        workers: int | None = None,
        *,
        dry_run: bool = False,
        timings: bool = True,
        limit_workers: int = 1,
    ) -> Coordinator:
        """A Coordinator with this pipeline's values, resources and steps (nothing built yet).

        ``timings=False``: results carry no duration (``choreo run`` writes none), which
        makes each record cheaper. ``limit_workers``: how many processes share each limit
        (each coordinator gets an equal share, at least 1); every coordinator has limit
        objects of its own. Raises PipelineError, positioned at the reference, when a step
        cannot be added.
        """
        from choreo_cli.core.coordinator import Coordinator
        from choreo_cli.pipeline.limits import build_limits

        limits = build_limits(self.limits, limit_workers)
        coordinator = Coordinator(
            workers=self.workers if workers is None else workers,
            values=self.values,
            resources={r.name: r.to_spec() for r in self.resources},
            dry_run=dry_run,
            timings=timings,
        )
        # Read by every runner's rare path (core/outcomes.py), through the coordinator's
        # run flags, which each Plan of it shares.
        coordinator.plan.flags.precheck_errors = self.precheck_errors
        for step in self.steps:
            try:
                coordinator.add_step(step.to_step(limits))
            except StepDefinitionError as exc:
                call = step.precheck if exc.phase == "precheck" and step.precheck else step.job
                raise PipelineError([call.problem(str(exc))]) from exc
        return coordinator


def _target(call: CallDefinition) -> Callable[..., Any]:
    if call.target is None:
        raise PipelineError([call.problem(f"{call.reference!r} was not imported")])
    target: Callable[..., Any] = call.target
    return target
