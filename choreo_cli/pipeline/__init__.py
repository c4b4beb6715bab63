"""Pipeline files: YAML to definitions to a Coordinator (loader, schema, references, interpolation).

The names below are imported on first use, so that importing one module of the package
does not load the others (``choreo validate`` and ``--version`` start fast).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from choreo_cli.pipeline.definitions import (
        CallDefinition,
        Pipeline,
        ResourceDefinition,
        StepDefinition,
    )
    from choreo_cli.pipeline.loader import (
        check_pipeline,
        load_pipeline,
        parse_override,
        read_pipeline_structure,
    )

_EXPORTS = {
    "CallDefinition": "choreo_cli.pipeline.definitions",
    "Pipeline": "choreo_cli.pipeline.definitions",
    "ResourceDefinition": "choreo_cli.pipeline.definitions",
    "StepDefinition": "choreo_cli.pipeline.definitions",
    "check_pipeline": "choreo_cli.pipeline.loader",
    "load_pipeline": "choreo_cli.pipeline.loader",
    "parse_override": "choreo_cli.pipeline.loader",
    "read_pipeline_structure": "choreo_cli.pipeline.loader",
}

__all__ = [
    "CallDefinition",
    "Pipeline",
    "ResourceDefinition",
    "StepDefinition",
    "check_pipeline",
    "load_pipeline",
    "parse_override",
    "read_pipeline_structure",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'choreo_cli.pipeline' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
