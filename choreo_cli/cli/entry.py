"""The console script: answers ``--version`` without importing typer, else runs the app."""

from __future__ import annotations

import sys


def main() -> None:
    """Entry point of the ``choreo`` command."""
    if sys.argv[1:] == ["--version"]:
        # The most frequent call from scripts; typer alone costs ~70 ms to import.
        from choreo_cli.version import get_version

        sys.stdout.write(f"choreo {get_version()}\n")
        return
    from choreo_cli.cli.app import main as run_app

    run_app()
