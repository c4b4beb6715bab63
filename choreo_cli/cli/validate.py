"""`choreo validate PIPELINE...`: check pipeline files and report every problem."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from choreo_cli.core.exit_codes import ExitCode

if TYPE_CHECKING:
    from choreo_cli.cli.reporters import FileReport


class ReportFormat(str, Enum):
    """How `choreo validate` writes its report."""

    TEXT = "text"
    JSON = "json"
    GITHUB = "github"


def validate(
    ctx: typer.Context,
    pipelines: Annotated[
        list[str],
        typer.Argument(metavar="PIPELINE", help="Pipeline files to check.", show_default=False),
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

    Exit 0 when every file is valid, 1 when one is not, 2 on a usage error.
    """
    from choreo_cli.cli.reporters import REPORTERS, FileReport
    from choreo_cli.cli.streams import streams_of
    from choreo_cli.pipeline.loader import check_pipeline

    streams = streams_of(ctx)
    reports = [
        FileReport(path, tuple(check_pipeline(path, import_code=not no_import, strict=strict)))
        for path in pipelines
    ]
    REPORTERS[report_format.value](streams.stdout).report(reports)
    streams.stdout.flush()
    typer.echo(_summary(reports), file=streams.stderr)
    return ExitCode.OK if all(r.valid for r in reports) else ExitCode.FAILED


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
