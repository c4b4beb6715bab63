"""The console script: quick paths for ``--version`` and plain ``run`` lines, else typer."""

from __future__ import annotations

import os
import sys


def _replace_closed_streams() -> None:
    # Started with stdout or stderr closed (`>&-`), Python sets them to None and the first
    # print would end in a traceback. Writing to /dev/null instead keeps exit codes
    # meaningful; `choreo run` still refuses to run with nowhere to write its results
    # (output.build_writer checks ``choreo_closed_at_start``).
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - process-long
    if sys.stdout is None:
        stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - process-long
        stdout.choreo_closed_at_start = True  # type: ignore[attr-defined]
        sys.stdout = stdout


def main() -> None:
    """Entry point of the ``choreo`` command."""
    _replace_closed_streams()
    if sys.argv[1:] == ["--version"]:
        # The most frequent call from scripts; typer alone costs ~70 ms to import.
        from choreo_cli.version import get_version

        sys.stdout.write(f"choreo {get_version()}\n")
        return
    if sys.argv[1:2] == ["run"] and "_CHOREO_COMPLETE" not in os.environ:
        # Plain `choreo run` command lines are read without typer (~0.2 s of start-up);
        # anything else, --help and shell completion included, goes to typer below.
        from choreo_cli.cli.run_options import read_plain_run_args

        options = read_plain_run_args(sys.argv[2:])
        if options is not None:
            from choreo_cli.cli.run_session import execute

            try:
                code = int(execute(options))
            except KeyboardInterrupt:
                # Ctrl-C before the run's own handlers were installed (or after).
                code = 130
            sys.exit(code)
    from choreo_cli.cli.app import main as run_app

    run_app()
