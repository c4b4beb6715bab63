"""The typer application: registers the commands and owns the process exit."""

from __future__ import annotations

import typer

from choreo_cli.cli.run import run
from choreo_cli.cli.schema_cmd import schema
from choreo_cli.cli.show import show
from choreo_cli.cli.validate import validate

app = typer.Typer(
    name="choreo",
    help="Run an ordered list of precheck/job steps over every record of a JSON Lines stream.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        from choreo_cli.version import get_version

        typer.echo(f"choreo {get_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version_callback,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Run an ordered list of precheck/job steps over every record of a JSON Lines stream."""


app.command("run")(run)
app.command("validate")(validate)
app.command("schema")(schema)
app.command("show")(show)


def main() -> None:
    """Console-script entry point."""
    app()
