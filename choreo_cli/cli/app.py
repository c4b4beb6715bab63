"""The typer application: registers the commands and turns the exit code each returns into typer's exit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec

import typer

from choreo_cli.cli import init_cmd, run, schema_cmd, show, test_cmd, validate
from choreo_cli.cli.streams import streams_of
from choreo_cli.cli.usage import CONTEXT_SETTINGS, ChoreoCommand, ChoreoGroup
from choreo_cli.core.exit_codes import ExitCode

if TYPE_CHECKING:
    from types import ModuleType

    from choreo_cli.cli.streams import Streams

P = ParamSpec("P")

app = typer.Typer(
    name="choreo",
    help="Run an ordered list of precheck/job steps over every record of a JSON Lines stream.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    # Plain help and usage errors in choreo's words, for the group and every command.
    cls=ChoreoGroup,
    context_settings=CONTEXT_SETTINGS,
    epilog="""\b
Examples:
  choreo init my-load && cd my-load
  choreo validate pipeline.yaml && choreo test
  choreo run pipeline.yaml -i records.jsonl -o results.jsonl
""",
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


def _register(name: str, command: Callable[P, ExitCode], module: ModuleType) -> None:
    """Add ``command`` to the app as ``choreo NAME``, with the short help and examples
    its module gives (``SHORT_HELP``, ``EXAMPLES``)."""
    app.command(
        name,
        cls=ChoreoCommand,
        context_settings=CONTEXT_SETTINGS,
        short_help=module.SHORT_HELP,
        epilog=module.EXAMPLES,
    )(_exits(command))


_register("run", run.run, run)
_register("validate", validate.validate, validate)
_register("schema", schema_cmd.schema, schema_cmd)
_register("show", show.show, show)
_register("test", test_cmd.pipeline_tests, test_cmd)
_register("init", init_cmd.init, init_cmd)


def main(streams: Streams) -> None:
    """Run the command of ``sys.argv`` with typer, over ``streams``; exits the process."""
    app(obj=streams)
