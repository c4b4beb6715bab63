"""Finding the pipeline files (`choreo validate DIR`) and test files (`choreo test DIR`) in a
directory tree."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from choreo_cli.pipeline.yaml_loader import MAX_BYTES, YamlLoadError, load_yaml

_SUFFIXES = (".yaml", ".yml")
_TEST_SUFFIXES = (".test.yaml", ".test.yml")
# Folders that hold other people's files (installed packages), never pipelines of this tree.
_SKIPPED_DIRS = frozenset({"node_modules", "__pycache__", "site-packages"})
# A top-level `steps:` key written in block style, for a file too broken to parse.
_STEPS_LINE = re.compile(rb"^(?:steps|\"steps\"|'steps')[ \t]*:", re.MULTILINE)


def find_pipeline_files(directory: str | os.PathLike[str]) -> list[str]:
    """The pipeline files under ``directory``, searched recursively, in sorted path order.

    A file is a pipeline file when its name ends in ``.yaml`` or ``.yml`` (but not
    ``.test.yaml``/``.test.yml``: test files) and its top level is a mapping with a
    ``steps`` key. A file that does not parse counts when a line starts with ``steps:``,
    so a pipeline broken by a syntax error is still checked; one that cannot be read
    counts too (the check then says why). Hidden files and folders, virtual environments,
    ``node_modules`` and ``__pycache__`` are skipped; symlinked files are followed,
    symlinked folders are not (no loops, nothing outside the tree). Paths start with
    ``directory`` as given (without a leading ``./`` for ``.``).

    >>> find_pipeline_files("sample_pipelines")  # doctest: +SKIP
    ['sample_pipelines/statements/pipeline.yaml']
    """
    return _find(directory, _is_pipeline_name)


def not_seen(files: Iterable[str], seen: set[str]) -> Iterator[str]:
    """The files not in ``seen`` yet, by real path (a file named twice, or through a
    link, is checked once), each added to it.

    >>> seen: set[str] = set()
    >>> list(not_seen(["a.yaml", "./a.yaml", "b.yaml"], seen)), list(not_seen(["b.yaml"], seen))
    (['a.yaml', 'b.yaml'], [])
    """
    for file in files:
        key = os.path.realpath(file)
        if key not in seen:
            seen.add(key)
            yield file


def find_test_files(directory: str | os.PathLike[str]) -> list[str]:
    """The test files (``*.test.yaml``, ``*.test.yml``) under ``directory``, searched
    recursively, in sorted path order; folders are skipped as ``find_pipeline_files`` skips them.

    >>> find_test_files("sample_pipelines")  # doctest: +SKIP
    ['sample_pipelines/statements/pipeline.test.yaml']
    """
    return _find(directory, lambda path, name: name.endswith(_TEST_SUFFIXES))


def is_test_file(path: str | os.PathLike[str]) -> bool:
    """True when the file's name says it is a test file (``*.test.yaml``, ``*.test.yml``)."""
    return os.fspath(path).endswith(_TEST_SUFFIXES)


def is_pipeline_file(path: str | os.PathLike[str]) -> bool:
    """True when the YAML file at ``path`` looks like a pipeline (a top-level ``steps`` key).

    Unreadable files answer True (they are reported when checked); files larger than a
    pipeline file may be are never pipelines.
    """
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_BYTES + 1)
    except OSError:
        return True
    if len(raw) > MAX_BYTES:
        return False
    try:
        data = load_yaml(raw.decode("utf-8-sig")).data
    except (UnicodeDecodeError, YamlLoadError):
        return _STEPS_LINE.search(raw) is not None
    return isinstance(data, dict) and "steps" in data


def _find(directory: str | os.PathLike[str], keep: Callable[[str, str], bool]) -> list[str]:
    """The files under ``directory`` that ``keep(path, name)`` accepts, in sorted path order,
    hidden files and skipped folders left out; paths as the finders' docstrings say."""
    root = os.fspath(directory)
    found: list[tuple[tuple[str, ...], str]] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not _skipped_dir(Path(current, d))]
        relative = Path(current).relative_to(root).parts
        for name in files:
            path = os.path.join(current, name)
            if not name.startswith(".") and keep(path, name):
                shown = os.path.join(*relative, name) if _is_here(root) else path
                found.append(((*relative, name), shown))
    return [shown for _, shown in sorted(found)]


def _is_pipeline_name(path: str, name: str) -> bool:
    if not name.endswith(_SUFFIXES) or name.endswith(_TEST_SUFFIXES):
        return False
    return is_pipeline_file(path)


def _skipped_dir(path: Path) -> bool:
    name = path.name
    if name.startswith(".") or name in _SKIPPED_DIRS or path.is_symlink():
        return True
    return (path / "pyvenv.cfg").is_file()  # a virtual environment


def _is_here(root: str) -> bool:
    return os.path.normpath(root) == "."
