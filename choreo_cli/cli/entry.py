"""The console script: quick paths for ``--version`` and plain ``run`` lines, else typer."""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Entry point of the ``choreo`` command: the one place the process exits."""
    from choreo_cli.cli.streams import Streams

    streams = Streams.for_process()
    if sys.argv[1:] == ["--version"]:
        # The most frequent call from scripts; typer alone costs ~70 ms to import.
        from choreo_cli.version import get_version

        streams.stdout.write(f"choreo {get_version()}\n")
        return
    if sys.argv[1:2] == ["run"] and "_CHOREO_COMPLETE" not in os.environ:
        # Plain `choreo run` command lines are read without typer (~0.2 s of start-up);
        # anything else, --help and shell completion included, goes to typer below.
        from choreo_cli.cli.run_options import read_plain_run_args

        options = read_plain_run_args(sys.argv[2:])
        if options is not None:
            from choreo_cli.cli.run_session import execute
            from choreo_cli.core.exit_codes import ExitCode

            try:
                code = execute(options, streams=streams)
            except KeyboardInterrupt:
                # Ctrl-C before the run's own handlers were installed (or after).
                code = ExitCode.INTERRUPTED
            sys.exit(int(code))
    from choreo_cli.cli.app import main as run_app

    run_app(streams)
