"""`choreo schema`: print the pipeline JSON Schema shipped inside the package."""

from __future__ import annotations

import typer

from choreo_cli.core.exit_codes import ExitCode


def schema(ctx: typer.Context) -> ExitCode:
    """Print the pipeline file's JSON Schema (2020-12), e.g. for an editor."""
    from choreo_cli.cli.streams import streams_of
    from choreo_cli.pipeline.schema import read_schema_text

    streams_of(ctx).write_stdout(read_schema_text())
    return ExitCode.OK
