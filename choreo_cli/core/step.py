"""A step as users write it (``Step``) and as the runners use it once checked (``Planned``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from choreo_cli.core.context import _Frame

if TYPE_CHECKING:
    from choreo_cli.core.limits import Gate, Limit
    from choreo_cli.core.retry import RetryPolicy
    from choreo_cli.core.signatures import CallSpec


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: an optional precheck and a job, with ``with:`` keywords for each.

    ``job_limits`` and ``precheck_limits``: the limits (choreo_cli.core.limits) each call
    waits for before it starts (every attempt of a retried job); a limit object shared by
    several steps is one limit for all of them.

    Examples:
        >>> def create(ctx, record): return record["id"]
        >>> Step(name="create", job=create).name
        'create'
    """

    name: str
    job: Callable[..., Any]
    precheck: Callable[..., Any] | None = None
    _: dataclasses.KW_ONLY
    job_with: Mapping[str, Any] | None = None
    precheck_with: Mapping[str, Any] | None = None
    job_name: str | None = None
    precheck_name: str | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None
    description: str | None = None
    job_limits: Sequence[Limit] = ()
    precheck_limits: Sequence[Limit] = ()


class Planned:
    """A step checked by ``Coordinator.add_step``: its callables' specs and what the runners need."""

    __slots__ = (
        "frame",
        "job",
        "job_gate",
        "key",
        "name",
        "pre",
        "pre_gate",
        "retry",
        "step",
        "timeout",
    )

    def __init__(self, step: Step, pre: CallSpec | None, job: CallSpec) -> None:
        self.step = step
        self.name = step.name
        self.key = step.name.casefold()
        self.frame = _Frame(step.name)
        self.pre = pre
        self.job = job
        self.retry = step.retry
        self.timeout = step.timeout
        # The limits each callable waits for, or None (most steps: no code for them).
        self.pre_gate = _gate(step.precheck_limits) if pre is not None else None
        self.job_gate = _gate(step.job_limits)

    def specs(self) -> tuple[CallSpec, ...]:
        """The step's callables: its precheck (if any), then its job."""
        return (self.job,) if self.pre is None else (self.pre, self.job)


def _gate(limits: Sequence[Limit]) -> Gate | None:
    if not limits:
        return None
    from choreo_cli.core.limits import Gate

    return Gate(limits)
