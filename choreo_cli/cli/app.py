"""The typer application: registers the commands and turns the exit code each returns into typer's exit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec

import typer

from choreo_cli.cli.init_cmd import init
from choreo_cli.cli.run import run
from choreo_cli.cli.schema_cmd import schema
from choreo_cli.cli.show import show
from choreo_cli.cli.streams import streams_of
from choreo_cli.cli.test_cmd import pipeline_tests
from choreo_cli.cli.validate import validate
from choreo_cli.core.exit_codes import ExitCode

if TYPE_CHECKING:
    from choreo_cli.cli.streams import Streams

P = ParamSpec("P")

app = typer.Typer(
    name="choreo",
    help="Run an ordered list of precheck/job steps over every record of a JSON Lines stream.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version_callback(ctx: typer.Context, value: bool) -> None:
    if value:
        from choreo_cli.version import get_version

        typer.echo(f"choreo {get_version()}", file=streams_of(ctx).stdout)
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


def _exits(command: Callable[P, ExitCode]) -> Callable[P, None]:
    """``command`` as typer runs it: the exit code it returns ends the process (typer's
    own way, ``typer.Exit``, so its usage errors and shell completion keep theirs)."""

    @functools.wraps(command)
    def run_command(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            code = int(command(*args, **kwargs))
        except KeyboardInterrupt:
            # Ctrl-C in a command without handlers of its own (validate importing a slow
            # module, test running steps): 130 as for `run`, not click's "Aborted!" and 1.
            code = ExitCode.INTERRUPTED
        raise typer.Exit(code)

    return run_command


app.command("run")(_exits(run))
app.command("validate")(_exits(validate))
app.command("schema")(_exits(schema))
app.command("show")(_exits(show))
app.command("test")(_exits(pipeline_tests))
app.command("init")(_exits(init))


def main(streams: Streams) -> None:
    """Run the command of ``sys.argv`` with typer, over ``streams``; exits the process."""
    app(obj=streams)
