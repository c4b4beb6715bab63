"""`choreo validate PATH...`: check pipeline files (named, or found in folders) and report every problem."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from choreo_cli.core.exit_codes import ExitCode

if TYPE_CHECKING:
    from choreo_cli.cli.reporters import FileReport
    from choreo_cli.pipeline.problems import Problem

# The line of `choreo --help`'s command list, and the end of this command's --help (\b
# keeps the lines as they are).
SHORT_HELP = "Check pipeline files and report every problem."
EXAMPLES = """\b
Examples:
  choreo validate pipeline.yaml
  choreo validate pipelines/ --format github
  choreo validate --no-import --strict untrusted.yaml
"""


class ReportFormat(str, Enum):
    """How `choreo validate` writes its report."""

    TEXT = "text"
    JSON = "json"
    GITHUB = "github"


def validate(
    ctx: typer.Context,
    pipelines: Annotated[
        list[str],
        typer.Argument(
            metavar="PATH",
            help="Pipeline files to check, or folders to search for them.",
            show_default=False,
        ),
    ],
    report_format: Annotated[
        ReportFormat,
        typer.Option(
            "--format",
            "-f",
            help="text: FILE:LINE:COL: message lines; json: one JSON report; github: annotations.",
            case_sensitive=False,
        ),
    ] = ReportFormat.TEXT,
    no_import: Annotated[
        bool,
        typer.Option(
            "--no-import", help="Check the structure only: import no user code (untrusted files)."
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Treat warnings (an unset ${VAR} without default) as errors."
        ),
    ] = False,
) -> ExitCode:
    """Check pipeline files: YAML, schema, names, ${VAR}s, references and signatures.

    A folder is searched recursively for *.yaml and *.yml files with a top-level 'steps:'
    key (hidden folders and virtual environments are skipped; test files are left alone).
    A file named here is always checked. Exit 0 when every file is valid, 1 when one is
    not, 2 on a usage error.
    """
    from choreo_cli.cli.reporters import REPORTERS, FileReport
    from choreo_cli.cli.streams import streams_of
    from choreo_cli.pipeline.loader import check_pipeline

    streams = streams_of(ctx)
    reports = []
    for path, empty_folder in _files_to_check(pipelines):
        if empty_folder:
            reports.append(FileReport(path, (_no_pipeline_in(path),)))
        else:
            problems = check_pipeline(path, import_code=not no_import, strict=strict)
            reports.append(FileReport(path, tuple(problems)))
    REPORTERS[report_format.value](streams.stdout).report(reports)
    streams.stdout.flush()
    typer.echo(_summary(reports), file=streams.stderr)
    return ExitCode.OK if all(r.valid for r in reports) else ExitCode.FAILED


def _files_to_check(paths: list[str]) -> list[tuple[str, bool]]:
    """(path, is an empty folder) for each file to check, each file once, in command order.

    A folder gives the pipeline files found in it; a folder with none gives itself, so
    that it is reported rather than silently passing.
    """
    import os

    from choreo_cli.pipeline.discover import find_pipeline_files

    seen: set[str] = set()
    found: list[tuple[str, bool]] = []
    for path in paths:
        if not os.path.isdir(path):
            files = [path]
        else:
            files = find_pipeline_files(path)
            if not files:
                found.append((path, True))
                continue
        for file in files:
            key = os.path.realpath(file)
            if key not in seen:
                seen.add(key)
                found.append((file, False))
    return found


def _no_pipeline_in(folder: str) -> Problem:
    from choreo_cli.pipeline.problems import Problem

    return Problem(
        folder,
        1,
        1,
        "no pipeline file in this folder — searched for *.yaml and *.yml files with a "
        "top-level 'steps:' key; name a file to check it whatever it holds",
    )


def _summary(reports: list[FileReport]) -> str:
    errors = sum(p.is_error for r in reports for p in r.problems)
    warnings = sum(not p.is_error for r in reports for p in r.problems)
    files = len(reports)
    noun = "file" if files == 1 else "files"
    tail = f" ({_count(warnings, 'warning')})" if warnings else ""
    if not errors:
        return f"ok: {files} {noun} valid{tail}"
    invalid = sum(not r.valid for r in reports)
    return f"{_count(errors, 'error')} in {invalid} of {files} {noun}{tail}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
