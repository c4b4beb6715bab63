"""Allow `python -m choreo_cli`."""

from __future__ import annotations

from choreo_cli.cli.entry import main

main()
