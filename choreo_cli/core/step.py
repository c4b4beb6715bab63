"""A step as users write it (``Step``) and as the runners use it once checked (``Planned``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from choreo_cli.core.context import _Frame

if TYPE_CHECKING:
    from choreo_cli.core.retry import RetryPolicy
    from choreo_cli.core.signatures import CallSpec


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: an optional precheck and a job, with ``with:`` keywords for each.

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


class Planned:
    """A step checked by ``Coordinator.add_step``: its callables' specs and what the runners need."""

    __slots__ = ("frame", "job", "key", "name", "pre", "retry", "step", "timeout")

    def __init__(self, step: Step, pre: CallSpec | None, job: CallSpec) -> None:
        self.step = step
        self.name = step.name
        self.key = step.name.casefold()
        self.frame = _Frame(step.name)
        self.pre = pre
        self.job = job
        self.retry = step.retry
        self.timeout = step.timeout

    def specs(self) -> tuple[CallSpec, ...]:
        """The step's callables: its precheck (if any), then its job."""
        return (self.job,) if self.pre is None else (self.pre, self.job)
