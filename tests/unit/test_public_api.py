"""The package's public names: what `from choreo_cli import ...` offers."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import pytest

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


DIR_TWICE = """
import importlib, json, sys
package = importlib.import_module(sys.argv[1])
before = dir(package)
for name in package.__all__:
    getattr(package, name)
from choreo_cli import *  # noqa: F403
print(json.dumps([before, dir(package), package.__all__]))
"""


@pytest.mark.parametrize("package", ["choreo_cli", "choreo_cli.pipeline", "choreo_cli.jsonl"])
def test_dir_lists_each_name_once_in_a_fresh_interpreter_before_and_after_use(
    package: str,
) -> None:
    """A fresh interpreter (nothing imported yet), and again once every lazy name was
    loaded into the package's globals, where it would show a second time."""
    done = subprocess.run(
        [sys.executable, "-c", DIR_TWICE, package],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    before, after, public = json.loads(done.stdout)
    for names in (before, after):
        assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
        assert names == sorted(names)
        assert set(public) <= set(names)
    # Loading a name adds its submodules (choreo_cli.core, ...), never a name twice.
    assert set(before) <= set(after)
