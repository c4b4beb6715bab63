"""The installed distribution's version, read from its metadata."""

from __future__ import annotations

# The stdlib importlib.metadata (Python 3.10+, which choreo requires).
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "choreo-cli"


def get_version() -> str:
    """Return the installed version of choreo-cli, or "0+unknown" when run from a bare tree."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"
