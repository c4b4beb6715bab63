"""`choreo schema`: print the pipeline JSON Schema shipped inside the package."""

from __future__ import annotations

import sys


def schema() -> None:
    """Print the pipeline file's JSON Schema (2020-12), e.g. for an editor."""
    from choreo_cli.pipeline.schema import read_schema_text

    sys.stdout.write(read_schema_text())
    sys.stdout.flush()
