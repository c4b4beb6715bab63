"""choreo: run an ordered list of precheck/job steps over every record of a stream.

>>> from choreo_cli import Coordinator, Step
>>> coordinator = Coordinator()
>>> coordinator.add_step(Step(name="greet", job=lambda ctx, record: f"hello, {record}"))
>>> coordinator.run("world").bag.job("greet")
'hello, world'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
from choreo_cli.result import ExecutionError, Result

if TYPE_CHECKING:
    from choreo_cli.pipeline import load_pipeline

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
    # load_pipeline pulls in yaml and jsonschema: only import them when asked for.
    if name == "load_pipeline":
        from choreo_cli.pipeline import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'choreo_cli' has no attribute {name!r}")
