"""choreo: run an ordered list of precheck/job steps over every record of a stream.

>>> from choreo_cli import Coordinator, Step
>>> coordinator = Coordinator()
>>> coordinator.add_step(Step(name="greet", job=lambda ctx, record: f"hello, {record}"))
>>> coordinator.run("world").bag.job("greet")
'hello, world'
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from choreo_cli.context import Context, DataBag
    from choreo_cli.coordinator import Coordinator, Step
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
    from choreo_cli.pipeline import load_pipeline
    from choreo_cli.result import ExecutionError, Result

# Where each public name lives. They are imported on first use, so that `choreo --version`
# and `choreo validate` do not pay for the coordinator (and asyncio) when they need none.
_EXPORTS = {
    "Cancel": "choreo_cli.errors",
    "Context": "choreo_cli.context",
    "Coordinator": "choreo_cli.coordinator",
    "DataBag": "choreo_cli.context",
    "ExecutionCanceled": "choreo_cli.errors",
    "ExecutionError": "choreo_cli.result",
    "Interrupted": "choreo_cli.errors",
    "JobFailed": "choreo_cli.errors",
    "PipelineError": "choreo_cli.errors",
    "ResourceError": "choreo_cli.errors",
    "Result": "choreo_cli.result",
    "Skip": "choreo_cli.errors",
    "Step": "choreo_cli.coordinator",
    "StepDefinitionError": "choreo_cli.errors",
    "StepTimeout": "choreo_cli.errors",
    "UnassignableInput": "choreo_cli.errors",
    "load_pipeline": "choreo_cli.pipeline",
}

__all__ = [
    "Cancel",
    "Context",
    "Coordinator",
    "DataBag",
    "ExecutionCanceled",
    "ExecutionError",
    "Interrupted",
    "JobFailed",
    "PipelineError",
    "ResourceError",
    "Result",
    "Skip",
    "Step",
    "StepDefinitionError",
    "StepTimeout",
    "UnassignableInput",
    "load_pipeline",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'choreo_cli' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
