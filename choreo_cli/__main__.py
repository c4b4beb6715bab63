"""Allow `python -m choreo_cli`."""

from __future__ import annotations

from choreo_cli.cli.app import main

main()
