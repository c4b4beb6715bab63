"""`choreo validate`'s work, without typer: check the files and report (``check_files``),
and read a plain command line (``read_plain_validate_args``) so that the most frequent
calls skip typer's start-up (~0.25 s: pre-commit and CI run it on every change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from choreo_cli.core.exit_codes import ExitCode

if TYPE_CHECKING:
    from choreo_cli.cli.reporters import FileReport
    from choreo_cli.cli.streams import Streams
    from choreo_cli.pipeline.problems import Problem

FORMATS = ("text", "json", "github")


@dataclass(frozen=True)
class ValidateOptions:
    """What `choreo validate` was asked to do."""

    paths: tuple[str, ...]
    report_format: str = "text"
    no_import: bool = False
    strict: bool = False


def read_plain_validate_args(args: list[str]) -> ValidateOptions | None:
    """The options of a plain ``choreo validate`` command line, or None for typer to read
    (help, a doubtful value, an unknown option, no path: its messages say what is wrong).

    >>> read_plain_validate_args(["p.yaml", "--no-import", "-f", "JSON", "pipelines/"])
    ValidateOptions(paths=('p.yaml', 'pipelines/'), report_format='json', no_import=True, strict=False)
    >>> read_plain_validate_args(["--format=nope", "p.yaml"]) is None
    True
    """
    paths: list[str] = []
    report_format = "text"
    flags = {"--no-import": False, "--strict": False}
    words = iter(args)
    for word in words:
        value: str | None = None
        if word in flags:
            flags[word] = True
            continue
        if word in ("--format", "-f"):
            value = next(words, None)
        elif word.startswith("--format="):
            value = word[len("--format=") :]
        elif word.startswith("-f") and len(word) > 2:
            value = word[2:]
        elif word.startswith("-"):  # help, "-", "--", an unknown or misspelt option
            return None
        else:
            paths.append(word)
            continue
        if value is None or value.lower() not in FORMATS:
            return None
        report_format = value.lower()
    if not paths:
        return None
    return ValidateOptions(tuple(paths), report_format, flags["--no-import"], flags["--strict"])


def check_files(options: ValidateOptions, streams: Streams) -> ExitCode:
    """Check every file named or found, write the report and the one-line total."""
    from choreo_cli.cli.reporters import REPORTERS, FileReport
    from choreo_cli.pipeline.loader import check_pipeline

    reports = []
    for path, empty_folder in _files_to_check(options.paths):
        if empty_folder:
            reports.append(FileReport(path, (_no_pipeline_in(path),)))
        else:
            problems = check_pipeline(
                path, import_code=not options.no_import, strict=options.strict
            )
            reports.append(FileReport(path, tuple(problems)))
    REPORTERS[options.report_format](streams.stdout).report(reports)
    streams.stdout.flush()
    streams.stderr.write(_summary(reports) + "\n")
    streams.stderr.flush()
    return ExitCode.OK if all(r.valid for r in reports) else ExitCode.FAILED


def _files_to_check(paths: tuple[str, ...]) -> list[tuple[str, bool]]:
    """(path, is an empty folder) for each file to check, each file once, in command order.

    A folder gives the pipeline files found in it; a folder with none gives itself, so
    that it is reported rather than silently passing.
    """
    import os

    from choreo_cli.pipeline.discover import find_pipeline_files, not_seen

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
        found.extend((file, False) for file in not_seen(files, seen))
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
