"""`choreo schema`: print a JSON Schema shipped inside the package (the pipeline file's by default)."""

from __future__ import annotations

from typing import Annotated

import typer

from choreo_cli.core.exit_codes import ExitCode


def schema(
    ctx: typer.Context,
    result: Annotated[
        bool,
        typer.Option("--result", help="Print the schema of a `choreo run` result line instead."),
    ] = False,
    test: Annotated[
        bool,
        typer.Option("--test", help="Print the schema of a test file (*.test.yaml) instead."),
    ] = False,
) -> ExitCode:
    """Print the pipeline file's JSON Schema (2020-12), e.g. for an editor.

    --result prints the schema of the result lines `choreo run` writes; --test the schema
    of the test files `choreo test` reads.
    """
    from choreo_cli.cli.streams import streams_of
    from choreo_cli.pipeline.schema import read_schema_text

    streams = streams_of(ctx)
    if result and test:
        streams.stderr.write("choreo schema: give --result or --test, not both\n")
        return ExitCode.USAGE
    streams.write_stdout(read_schema_text("result" if result else "test" if test else "pipeline"))
    return ExitCode.OK
