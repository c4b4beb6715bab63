"""The installed distribution's version, read from its metadata."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 10):
    from importlib.metadata import PackageNotFoundError, version
else:  # pragma: no cover - the stdlib module lacks the API before 3.10
    from importlib_metadata import PackageNotFoundError, version

DISTRIBUTION = "choreo-cli"


def get_version() -> str:
    """Return the installed version of choreo-cli, or "0+unknown" when run from a bare tree."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"
