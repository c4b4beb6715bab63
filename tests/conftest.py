"""Shared pytest fixtures."""

from __future__ import annotations

import importlib
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

MakeModule = Callable[[str, str], Path]

# A shell starts a background job with SIGINT ignored, and an ignored signal stays ignored
# in every child: the commands the tests interrupt would never see their Ctrl-C. The
# suite runs as from a terminal whoever started it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeModule]:
    """Write throwaway importable modules: ``make_module("pkg.steps", "def f(ctx): ...")``.

    The modules live under ``tmp_path / "modules"``, which is put first on sys.path; they
    are removed from sys.modules after the test. Returns the written file's path.
    """
    root = tmp_path / "modules"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    tops: set[str] = set()

    def make(name: str, source: str) -> Path:
        parts = name.split(".")
        for depth in range(1, len(parts)):
            package = root.joinpath(*parts[:depth])
            package.mkdir(exist_ok=True)
            (package / "__init__.py").touch()
        path = root.joinpath(*parts[:-1], f"{parts[-1]}.py")
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        tops.add(parts[0])
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[loaded]
        importlib.invalidate_caches()
        return path

    yield make
    for loaded in list(sys.modules):
        if loaded.split(".")[0] in tops:
            del sys.modules[loaded]
