"""`choreo init [DIR]`: write a starter pipeline (pipeline, steps, tests, records, schema)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer

from choreo_cli.core.exit_codes import ExitCode

if TYPE_CHECKING:
    from choreo_cli.cli.console import Console

# The files written, in the order they are named; each but the schema from a template
# in choreo_cli/templates/init/ (a .tmpl suffix keeps them out of imports and test runs).
STARTER_FILES = (
    "pipeline.yaml",
    "steps.py",
    "pipeline.test.yaml",
    "records.jsonl",
    "pipeline.schema.json",
)
_NAME_MARK = "{{name}}"
_DEFAULT_NAME = "starter"
# A name written without quotes: words of letters, digits, '_' and '-' joined by single
# spaces or dots, starting with a letter (so never a number), and no YAML keyword below.
_PLAIN_NAME = r"[A-Za-z][A-Za-z0-9_-]*(?:[ .][A-Za-z0-9_-]+)*\Z"
# Read as null or a boolean by YAML 1.2 (true, null) or by YAML 1.1 readers (yes, on).
_YAML_WORDS = frozenset({"null", "true", "false", "yes", "no", "on", "off", "y", "n"})
# Not written raw inside a double-quoted YAML string: DEL, C1 controls, U+2028/U+2029, a
# byte order mark, lone surrogates (json.dumps escapes the C0 controls itself).
_UNSAFE_IN_QUOTES = "[\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]"

# The line of `choreo --help`'s command list, and the end of this command's --help (\b
# keeps the lines as they are).
SHORT_HELP = "Write a starter pipeline, its steps and its tests."
EXAMPLES = """\b
Examples:
  choreo init my-load
  choreo init . --name orders
"""


class StarterFile(NamedTuple):
    """One file of the starter pipeline: its name in the directory and its text.

    (A named tuple: a frozen dataclass would add milliseconds to every command's start.)
    """

    name: str
    text: str


def init(
    ctx: typer.Context,
    directory: Annotated[
        str,
        typer.Argument(
            metavar="DIR", help="Where to write the files (created if missing).", show_default=True
        ),
    ] = ".",
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            help="The pipeline's name (pipeline.yaml's name:). Default: DIR's name.",
            show_default=False,
        ),
    ] = None,
) -> ExitCode:
    """Write a starter pipeline into DIR: pipeline.yaml, steps.py, pipeline.test.yaml,
    records.jsonl and pipeline.schema.json.

    Never overwrites: when any of these files exists, nothing is written (exit 2). Then
    `choreo validate pipeline.yaml`, `choreo test` and
    `choreo run pipeline.yaml -i records.jsonl` work in DIR as they are.
    """
    from choreo_cli.cli.console import build_console
    from choreo_cli.cli.streams import streams_of

    console = build_console(streams_of(ctx))
    target = Path(directory)
    if name is None:
        name = default_name(target)
    elif not name.strip():
        console.error("--name is empty — give the pipeline a name, e.g. --name orders")
        return ExitCode.USAGE
    return write_starter(target, render_starter(name), console)


def default_name(directory: Path) -> str:
    """The name of a pipeline started in ``directory``: the directory's own name.

    >>> default_name(Path("/srv/orders")), default_name(Path("/"))
    ('orders', 'starter')
    """
    return Path(os.path.abspath(directory)).name or _DEFAULT_NAME


def yaml_string(text: str) -> str:
    """``text`` as a YAML scalar that reads back as exactly that string: plain when it is
    a simple name, double-quoted (JSON escapes, valid YAML) otherwise.

    >>> yaml_string("orders"), yaml_string("true"), yaml_string("a: b"), yaml_string("12")
    ('orders', '"true"', '"a: b"', '"12"')
    """
    import json
    import re

    if re.match(_PLAIN_NAME, text) and text.lower() not in _YAML_WORDS:
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    return re.sub(_UNSAFE_IN_QUOTES, lambda m: f"\\u{ord(m.group()):04x}", quoted)


def render_starter(name: str) -> list[StarterFile]:
    """The starter files for a pipeline called ``name``, in ``STARTER_FILES`` order.

    >>> [f.name for f in render_starter("orders")] == list(STARTER_FILES)
    True
    >>> "name: orders\\n" in render_starter("orders")[0].text
    True
    """
    from importlib import resources

    from choreo_cli.pipeline.schema import read_schema_text

    templates = resources.files("choreo_cli").joinpath("templates").joinpath("init")
    files = []
    for file_name in STARTER_FILES:
        if file_name == "pipeline.schema.json":
            text = read_schema_text("pipeline")
        else:
            text = templates.joinpath(file_name + ".tmpl").read_text(encoding="utf-8")
            text = text.replace(_NAME_MARK, yaml_string(name))
        files.append(StarterFile(file_name, text))
    return files


def write_starter(directory: Path, files: list[StarterFile], console: Console) -> ExitCode:
    """Write ``files`` into ``directory`` (made when missing), or nothing at all: when one
    of them exists already, or one cannot be written (what was written is removed)."""
    import errno
    import shlex

    shown = _shown(directory)
    if directory.exists() and not directory.is_dir():
        console.error(f"{shown} is not a directory — choose a directory for the new pipeline")
        return ExitCode.USAGE
    existing = [f.name for f in files if os.path.lexists(directory / f.name)]
    if existing:
        for file_name in existing:
            console.error(f"{_shown(directory / file_name)} already exists")
        console.error(
            "nothing was written: choreo init never overwrites a file"
            " — start in a new directory, e.g. choreo init my-pipeline"
        )
        return ExitCode.USAGE
    made: list[Path] = []
    try:
        made.extend(_make_directories(directory))
        for file in files:
            path = directory / file.name
            # "x": fails rather than overwrite a file that appeared meanwhile.
            with open(path, "x", encoding="utf-8") as stream:
                made.append(path)
                stream.write(file.text)
    except OSError as exc:
        _remove(made)
        reason = "already exists" if exc.errno == errno.EEXIST else (exc.strerror or str(exc))
        where = _shown(Path(exc.filename)) if exc.filename else shown
        console.error(f"cannot write {where}: {reason} — nothing was written")
        return ExitCode.USAGE
    console.info(f"wrote {', '.join(f.name for f in files)} in {shown}")
    console.info("next, try:")
    if os.path.abspath(directory) != os.getcwd():
        console.info(f"  cd {shlex.quote(str(directory))}")
    console.info("  choreo validate pipeline.yaml")
    console.info("  choreo test")
    console.info("  choreo run pipeline.yaml -i records.jsonl")
    return ExitCode.OK


def _make_directories(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; the ones created, outermost first."""
    missing = []
    for path in (directory, *directory.parents):
        if os.path.lexists(path):
            break
        missing.append(path)
    directory.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _remove(made: list[Path]) -> None:
    # Files first, then the directories this command created, innermost first.
    for path in reversed(made):
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
        except OSError:
            pass


def _shown(path: Path) -> str:
    return "the current directory" if str(path) == "." else str(path)
