"""Pipeline files: YAML to definitions to a Coordinator (loader, schema, references, interpolation).

The names below are imported on first use, so that importing one module of the package
does not load the others (``choreo validate`` and ``--version`` start fast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from choreo_cli.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
