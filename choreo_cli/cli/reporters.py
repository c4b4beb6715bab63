"""Reporters for `choreo validate`: text, json and github, each writing to a stream it is given."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from choreo_cli.cli.escapes import github_command, json_text, printable
from choreo_cli.pipeline.problems import Problem


@dataclass(frozen=True)
class FileReport:
    """The problems found in one pipeline file; the file is valid when none is an error."""

    file: str
    problems: tuple[Problem, ...]

    @property
    def valid(self) -> bool:
        """True when the file has no errors (warnings are fine)."""
        return not any(p.is_error for p in self.problems)


class Reporter:
    """Writes the reports of every checked file to ``stream``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def report(self, reports: Sequence[FileReport]) -> None:
        """Write the reports."""
        raise NotImplementedError


class TextReporter(Reporter):
    """One ``FILE:LINE:COL: message`` line per problem, control characters escaped.

    >>> import io; out = io.StringIO()
    >>> TextReporter(out).report([FileReport("p.yaml", (Problem("p.yaml", 1, 1, "bad"),))])
    >>> out.getvalue()
    'p.yaml:1:1: bad\\n'
    """

    def report(self, reports: Sequence[FileReport]) -> None:
        for file_report in reports:
            for problem in file_report.problems:
                self.stream.write(f"{printable(str(problem))}\n")


class JsonReporter(Reporter):
    """One JSON document: ``{"valid": ..., "errors": n, "warnings": n, "files": [...]}``.

    Always valid UTF-8: an undecodable byte of a file name is the text ``\\xff``.
    """

    def report(self, reports: Sequence[FileReport]) -> None:
        problems = [p for r in reports for p in r.problems]
        document = {
            "valid": all(r.valid for r in reports),
            "errors": sum(p.is_error for p in problems),
            "warnings": sum(not p.is_error for p in problems),
            "files": [
                {
                    "file": r.file,
                    "valid": r.valid,
                    "problems": [
                        {
                            "line": p.line,
                            "column": p.column,
                            "severity": p.severity,
                            "message": p.message,
                        }
                        for p in r.problems
                    ],
                }
                for r in reports
            ],
        }
        self.stream.write(json_text(document, indent=2) + "\n")


class GithubReporter(Reporter):
    """GitHub Actions workflow commands: ``::error file=F,line=L,col=C::message``."""

    def report(self, reports: Sequence[FileReport]) -> None:
        for file_report in reports:
            for p in file_report.problems:
                self.stream.write(
                    github_command(
                        p.severity,
                        p.message,
                        file=p.file,
                        line=p.line,
                        column=p.column,
                        title="choreo validate",
                    )
                )


REPORTERS: dict[str, type[Reporter]] = {
    "text": TextReporter,
    "json": JsonReporter,
    "github": GithubReporter,
}
