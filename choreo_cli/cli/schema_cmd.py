"""`choreo schema`: print a JSON Schema shipped inside the package (the pipeline file's by default)."""

from __future__ import annotations

from typing import Annotated

import typer

from choreo_cli.core.exit_codes import ExitCode

# The line of `choreo --help`'s command list, and the end of this command's --help (\b
# keeps the lines as they are).
SHORT_HELP = "Print the pipeline file's JSON Schema, for an editor."
EXAMPLES = """\b
Examples:
  choreo schema > pipeline.schema.json
  choreo schema --result > result.schema.json
"""


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
    summary: Annotated[
        bool,
        typer.Option(
            "--summary", help="Print the schema of the file `choreo run --summary-json` writes."
        ),
    ] = False,
) -> ExitCode:
    """Print the pipeline file's JSON Schema (2020-12), e.g. for an editor.

    --result prints the schema of the result lines `choreo run` writes; --test the schema
    of the test files `choreo test` reads; --summary the schema of `choreo run
    --summary-json`.
    """
    from choreo_cli.cli.streams import streams_of
    from choreo_cli.pipeline.schema import SchemaName, read_schema_text

    streams = streams_of(ctx)
    flags: tuple[tuple[SchemaName, bool], ...] = (
        ("result", result),
        ("test", test),
        ("summary", summary),
    )
    chosen = [name for name, given in flags if given]
    if len(chosen) > 1:
        names = ", ".join(f"--{name}" for name in chosen)
        from choreo_cli.cli.console import build_console

        build_console(streams).error(f"give one of {names}, not more — see choreo schema --help")
        return ExitCode.USAGE
    streams.write_stdout(read_schema_text(chosen[0] if chosen else "pipeline"))
    return ExitCode.OK
