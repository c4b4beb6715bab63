"""choreo: run an ordered list of precheck/job steps over every record of a stream.

>>> from choreo_cli import Coordinator, Step
>>> coordinator = Coordinator()
>>> coordinator.add_step(Step(name="greet", job=lambda ctx, record: f"hello, {record}"))
>>> coordinator.run("world").bag.job("greet")
'hello, world'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from choreo_cli.lazy import lazy_exports

if TYPE_CHECKING:
    from choreo_cli.core.context import Context, DataBag
    from choreo_cli.core.coordinator import Coordinator
    from choreo_cli.core.limits import ConcurrencyLimit, RateLimit
    from choreo_cli.core.result import ExecutionError, Result
    from choreo_cli.core.retry import RetryPolicy
    from choreo_cli.core.step import Step
    from choreo_cli.errors import (
        Cancel,
        ExecutionCanceled,
        Interrupted,
        JobFailed,
        PipelineError,
        ResourceError,
        Skip,
        StepDefinitionError,
        StepTimeout,
        UnassignableInput,
    )
    from choreo_cli.pipeline.loader import load_pipeline

# Where each public name lives. They are imported on first use, so that `choreo --version`
# and `choreo validate` do not pay for the coordinator (and asyncio) when they need none.
_EXPORTS = {
    "Cancel": "choreo_cli.errors",
    "ConcurrencyLimit": "choreo_cli.core.limits",
    "Context": "choreo_cli.core.context",
    "Coordinator": "choreo_cli.core.coordinator",
    "DataBag": "choreo_cli.core.context",
    "ExecutionCanceled": "choreo_cli.errors",
    "ExecutionError": "choreo_cli.core.result",
    "Interrupted": "choreo_cli.errors",
    "JobFailed": "choreo_cli.errors",
    "PipelineError": "choreo_cli.errors",
    "RateLimit": "choreo_cli.core.limits",
    "ResourceError": "choreo_cli.errors",
    "Result": "choreo_cli.core.result",
    "Skip": "choreo_cli.errors",
    "RetryPolicy": "choreo_cli.core.retry",
    "Step": "choreo_cli.core.step",
    "StepDefinitionError": "choreo_cli.errors",
    "StepTimeout": "choreo_cli.errors",
    "UnassignableInput": "choreo_cli.errors",
    "load_pipeline": "choreo_cli.pipeline.loader",
}

__all__ = [
    "Cancel",
    "ConcurrencyLimit",
    "Context",
    "Coordinator",
    "DataBag",
    "ExecutionCanceled",
    "ExecutionError",
    "Interrupted",
    "JobFailed",
    "PipelineError",
    "RateLimit",
    "ResourceError",
    "Result",
    "RetryPolicy",
    "Skip",
    "Step",
    "StepDefinitionError",
    "StepTimeout",
    "UnassignableInput",
    "__version__",
    "load_pipeline",
]


_export, _names = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    """A public name, imported on first use; ``__version__``: the installed version."""
    if name == "__version__":
        from choreo_cli.version import get_version

        return get_version()
    return _export(name)


def __dir__() -> list[str]:
    return sorted({*_names(), "__version__"})
