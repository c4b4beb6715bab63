"""The examples in README.md, docs/ and the samples' READMEs run as tests (sybil), and their
shown output is checked.

Each page runs in a fresh folder holding a copy of ``sample_pipelines/`` (a sample's README
starts in its sample's folder), top to bottom:

- a fenced block with a file name (```` ```python title="steps.py" ````, the attribute the
  docs theme shows as a caption) writes that file, relative to the page's current folder;
- a ```` ```console ```` block runs each ``$ command`` with bash (``choreo`` is the one of
  this checkout's virtualenv) and compares what it printed, stdout and stderr together as a
  terminal shows them, with the lines that follow; ``...`` stands for any text (doctest's
  ELLIPSIS), and a ``cd DIR`` command changes the page's folder for what follows;
- a ```` ```python ```` block runs in that folder, in one namespace per page; one that
  starts with ``>>>`` is a doctest, its output checked;
- a ```` ```yaml ```` block without a file name (a fragment) must at least be YAML;
- ``<!-- skip: next "why" -->`` before a block skips it (sybil's own directive).

tests/docs/test_pages.py checks that no block escapes this: no ``sh``/``bash`` blocks, and
every fenced block is of a known kind. A page's examples build on each other, so a page
is one test (its examples in order, the first failure named), whichever pytest-xdist
process runs it.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from sybil import Document, Example, Region, Sybil
from sybil.example import SybilFailure
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

ROOT = Path(__file__).resolve().parent
TITLE = re.compile(r'\btitle="([^"]+)"')
# What a page's commands may not inherit from whoever runs the tests.
DROPPED_ENV = ("GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS", "FORCE_COLOR", "CLICOLOR_FORCE")
COMMAND_TIMEOUT_S = 300


@dataclass
class Page:
    """One page's run: its folder, where its commands are, what it put on sys.path."""

    root: Path
    cwd: Path
    old_cwd: str
    old_path: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    started: bool = False


def _page(example: Example) -> Page:
    """The page's run; a sample's README starts in (the copy of) its sample's folder."""
    page: Page = example.namespace["__page__"]
    if not page.started:
        page.started = True
        where = Path(example.document.path).resolve().parent
        if where.parent == ROOT / "sample_pipelines":
            page.cwd = page.root / "sample_pipelines" / where.name
    return page


def _setup(namespace: dict[str, Any]) -> None:
    root = Path(tempfile.mkdtemp(prefix="choreo-docs-"))
    shutil.copytree(
        ROOT / "sample_pipelines",
        root / "sample_pipelines",
        ignore=shutil.ignore_patterns("__pycache__", "*.db*", "results.jsonl", "*.pyc"),
    )
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env = {k: v for k, v in env.items() if not k.startswith("CHOREO_")}
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        NO_COLOR="1",
        TERM="dumb",
        COLUMNS="100",
        PYTHONDONTWRITEBYTECODE="1",
    )
    namespace["__page__"] = Page(root, root, os.getcwd(), list(sys.path), env)


def _teardown(namespace: dict[str, Any]) -> None:
    page: Page = namespace["__page__"]
    os.chdir(page.old_cwd)
    sys.path[:] = page.old_path
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        if origin.startswith(str(page.root)):
            del sys.modules[name]
    shutil.rmtree(page.root, ignore_errors=True)


def _commands(source: str) -> Iterator[tuple[str, str]]:
    """``(command, expected output)`` for each ``$ `` line (``\\`` continues a command)."""
    command: list[str] = []
    output: list[str] = []
    continued = False
    for line in source.splitlines():
        if continued:
            command.append(line)
            continued = line.endswith("\\")
        elif line.startswith("$ "):
            if command:
                yield "\n".join(command), "\n".join(output)
            command, output = [line[2:]], []
            continued = line.endswith("\\")
        else:
            output.append(line)
    if command:
        yield "\n".join(command), "\n".join(output)


def _tidy(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def _as_from_a_terminal() -> None:
    """In the command's process before it starts: SIGINT and SIGTERM act and nothing is
    blocked, as for a command typed in a terminal, whatever the test process that runs the
    page was left with (an ignored or blocked signal stays so in every child)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _run_console(example: Example) -> str | None:
    page = _page(example)
    checker = doctest.OutputChecker()
    for command, expected in _commands(example.parsed):
        words = shlex.split(command) if "\n" not in command else []
        if len(words) == 2 and words[0] == "cd":
            page.cwd = (page.cwd / words[1]).resolve()
            if not page.cwd.is_dir():
                return f"$ {command}\nno such folder: {page.cwd}"
            continue
        done = subprocess.run(
            ["bash", "-c", command],
            preexec_fn=_as_from_a_terminal,
            cwd=page.cwd,
            env=page.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        got = _tidy(done.stdout.decode("utf-8", "replace"))
        want = _tidy(expected)
        if not checker.check_output(want + "\n", got + "\n", doctest.ELLIPSIS):
            return f"$ {command}\n--- shown\n{want}\n--- printed (exit {done.returncode})\n{got}"
    return None


def _write_file(example: Example) -> None:
    page = _page(example)
    name = example.region.lexemes["arguments"]
    match = TITLE.search(name)
    assert match is not None
    path = page.cwd / match.group(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(example.parsed, encoding="utf-8")


def _check_yaml(example: Example) -> None:
    yaml.safe_load(example.parsed)


def _fenced(document: Document) -> Iterator[Region]:
    """Console blocks, titled blocks (files) and untitled YAML fragments."""
    lexer = FencedCodeBlockLexer(
        language=r".+", mapping={"language": "arguments", "source": "source"}
    )
    for region in lexer(document):
        info = region.lexemes["arguments"].strip()
        region.parsed = region.lexemes["source"]
        if TITLE.search(info):
            region.evaluator = _write_file
        elif info == "console":
            region.evaluator = _run_console
        elif info == "yaml":
            region.evaluator = _check_yaml
        else:
            continue
        yield region


_python = PythonCodeBlockParser(doctest_optionflags=doctest.ELLIPSIS)


def _python_in_page(document: Document) -> Iterator[Region]:
    """Python blocks, run in the page's current folder with that folder importable."""
    for region in _python(document):
        inner = region.evaluator

        def evaluate(example: Example, inner: Any = inner) -> str | None:
            page = _page(example)
            os.chdir(page.cwd)
            if str(page.cwd) not in sys.path:
                sys.path.insert(0, str(page.cwd))
            result: str | None = inner(example)
            return result

        region.evaluator = evaluate
        yield region


PAGES = Sybil(
    parsers=[SkipParser(), _fenced, _python_in_page],
    patterns=["README.md", "docs/*.md", "sample_pipelines/*/README.md"],
    setup=_setup,
    teardown=_teardown,
)


class PageExamples(pytest.Item):
    """A page's examples as one test, run in order: they build on each other (files a
    block writes, the folder a ``cd`` chose), so a page cannot be split between the
    processes of pytest-xdist. The first example that fails fails the page, naming it."""

    def __init__(self, *, document: Document, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.document = document

    def runtest(self) -> None:
        namespace = self.document.namespace
        _setup(namespace)
        try:
            for example in self.document.examples():
                try:
                    example.evaluate()
                except unittest.SkipTest:  # <!-- skip: next "why" -->: the reason is on the page
                    continue
        finally:
            _teardown(namespace)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, SybilFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}: its examples"


class PageFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        yield PageExamples.from_parent(self, name="examples", document=PAGES.parse(self.path))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> PageFile | None:
    if PAGES.should_parse(file_path):
        return PageFile.from_parent(parent, path=file_path)
    return None
