"""`choreo validate PATH...`: check pipeline files (named, or found in folders) and report every problem."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from choreo_cli.core.exit_codes import ExitCode

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
    from choreo_cli.cli.streams import streams_of
    from choreo_cli.cli.validate_files import ValidateOptions, check_files

    options = ValidateOptions(tuple(pipelines), report_format.value, no_import, strict)
    return check_files(options, streams_of(ctx))
