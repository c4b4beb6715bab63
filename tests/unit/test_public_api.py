"""The package's public names: what `from choreo_cli import ...` offers."""

from __future__ import annotations

from importlib.metadata import version

import choreo_cli


def test_the_version_is_the_installed_distributions() -> None:
    assert choreo_cli.__version__ == version("choreo-cli")
    from choreo_cli import __version__

    assert __version__ == choreo_cli.__version__


def test_dir_lists_each_public_name_once_and_each_resolves() -> None:
    names = dir(choreo_cli)
    assert len(names) == len(set(names))
    assert set(choreo_cli.__all__) <= set(names)
    for name in choreo_cli.__all__:
        assert getattr(choreo_cli, name) is not None
