"""`choreo test [PATH...]`: run the tests of pipeline test files and report what failed, where."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from choreo_cli.core.exit_codes import ExitCode

if TYPE_CHECKING:
    from choreo_cli.cli.streams import Streams
    from choreo_cli.testing.outcomes import FileOutcome

# The line of `choreo --help`'s command list, and the end of this command's --help (\b
# keeps the lines as they are).
SHORT_HELP = "Run the tests of pipeline test files (*.test.yaml)."
EXAMPLES = """\b
Examples:
  choreo test
  choreo test pipeline.test.yaml -k welcomed -q
  choreo test tests/ --format junit > test-report.xml
"""


class TestFormat(str, Enum):
    """How `choreo test` writes its report."""

    __test__ = False  # not a pytest class

    TEXT = "text"
    JSON = "json"
    GITHUB = "github"
    JUNIT = "junit"


@dataclass(frozen=True)
class TestOptions:
    """The options of one `choreo test` command."""

    __test__ = False  # not a pytest class

    paths: tuple[str, ...]
    keyword: str | None
    report_format: str
    quiet: bool
    timeout: float | None
    update: bool


def pipeline_tests(
    ctx: typer.Context,
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PATH",
            help="Test files (*.test.yaml, *.test.yml), or folders to search for them [default: .].",
            show_default=False,
        ),
    ] = None,
    keyword: Annotated[
        str | None,
        typer.Option("-k", metavar="TEXT", help="Run only the tests whose name contains TEXT."),
    ] = None,
    report_format: Annotated[
        TestFormat,
        typer.Option(
            "--format",
            "-f",
            help="text: failures as FILE:LINE:COL lines, one line per file; json: one JSON "
            "report; github: annotations; junit: JUnit XML.",
            case_sensitive=False,
        ),
    ] = TestFormat.TEXT,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print failures and the total only.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", metavar="S", min=0.001, help="Fail a test that runs longer than S seconds."
        ),
    ] = None,
    update: Annotated[
        bool,
        typer.Option(
            "--update",
            help="Rewrite the expect: (and exit_code:) of failing tests with what happened; "
            "the rest of each file is left as it was.",
        ),
    ] = False,
) -> ExitCode:
    """Run pipeline tests: records in, mocks and resources replaced, results compared.

    A folder is searched recursively for *.test.yaml and *.test.yml files (hidden folders
    and virtual environments are skipped); no PATH means the current folder. Exit 0 when
    every test passed, 1 when a test failed, 2 on a usage error or an unusable test file.
    """
    from choreo_cli.cli.streams import streams_of

    options = TestOptions(
        paths=tuple(paths or ["."]),
        keyword=keyword,
        report_format=report_format.value,
        quiet=quiet,
        timeout=timeout,
        update=update,
    )
    return run_tests(options, streams_of(ctx))


def run_tests(options: TestOptions, streams: Streams) -> ExitCode:
    """Find the test files, run them, update them when asked, report; the exit code."""
    import contextlib

    from choreo_cli.cli.test_reporters import REPORTERS
    from choreo_cli.testing.runner import run_test_file

    outcomes: list[FileOutcome] = []
    with contextlib.ExitStack() as stack:
        # What steps print goes to stderr, never into a JSON or JUnit report.
        streams.divert_stdout(stack)
        for path, problem in _files_to_run(options.paths):
            if problem is not None:
                outcomes.append(problem)
                continue
            outcomes.append(run_test_file(path, keyword=options.keyword, timeout=options.timeout))
    if options.update:
        updated = _update(outcomes, streams)
        outcomes = [_as_updated(o, updated) for o in outcomes]
    reporter = REPORTERS[options.report_format](streams.stdout, quiet=options.quiet)
    reporter.report(outcomes)
    streams.stdout.flush()
    ran = [t for o in outcomes for t in o.tests]
    typer.echo(_summary(outcomes), file=streams.stderr)
    if not all(o.usable for o in outcomes):
        return ExitCode.USAGE
    if options.keyword is not None and not ran:
        from choreo_cli.cli.escapes import printable

        typer.echo(
            f"choreo test: no test name contains {printable(repr(options.keyword))}",
            file=streams.stderr,
        )
        return ExitCode.USAGE
    failed = [t for o in outcomes for t in o.tests if not t.passed]
    return ExitCode.FAILED if failed else ExitCode.OK


def _files_to_run(paths: tuple[str, ...]) -> list[tuple[str, FileOutcome | None]]:
    """(path, None) for each test file to run, each once, in command order; a folder
    without test files or a missing path gives (path, its problem)."""
    import os

    from choreo_cli.pipeline.discover import find_test_files, not_seen
    from choreo_cli.pipeline.problems import Problem
    from choreo_cli.testing.outcomes import FileOutcome

    seen: set[str] = set()
    found: list[tuple[str, FileOutcome | None]] = []
    for path in paths:
        if os.path.isdir(path):
            files = find_test_files(path)
            if not files:
                message = (
                    "no test file in this folder — searched for *.test.yaml and *.test.yml "
                    "files (hidden folders and virtual environments skipped)"
                )
                found.append((path, FileOutcome(path, (Problem(path, 1, 1, message),))))
                continue
        elif not os.path.exists(path):
            problem = Problem(path, 1, 1, "no such file or folder")
            found.append((path, FileOutcome(path, (problem,))))
            continue
        else:
            files = [path]
        found.extend((file, None) for file in not_seen(files, seen))
    return found


def _update(outcomes: list[FileOutcome], streams: Streams) -> set[tuple[str, int]]:
    """Rewrite the expectations of the failing tests that ran; (file, test index) of each
    test updated."""
    from choreo_cli.cli.escapes import printable
    from choreo_cli.testing.update import TestUpdate, update_expectations

    updated: set[tuple[str, int]] = set()
    for outcome in outcomes:
        updates = {
            t.index: TestUpdate(
                expect=t.expectations(), exit_code=t.exit_code if t.had_exit_code else None
            )
            for t in outcome.tests
            if not t.passed and not t.errored
        }
        if not updates:
            continue
        try:
            with open(outcome.file, encoding="utf-8", newline="") as stream:
                text = stream.read()
            new_text = update_expectations(text, updates)
            with open(outcome.file, "w", encoding="utf-8", newline="") as stream:
                stream.write(new_text)
        except (OSError, ValueError) as exc:
            typer.echo(
                f"{printable(outcome.file)}: not updated: {printable(str(exc))}",
                file=streams.stderr,
            )
            continue
        updated.update((outcome.file, index) for index in updates)
        count = len(updates)
        noun = "test" if count == 1 else "tests"
        typer.echo(f"{printable(outcome.file)}: updated {count} {noun}", file=streams.stderr)
    return updated


def _as_updated(outcome: FileOutcome, updated: set[tuple[str, int]]) -> FileOutcome:
    """The outcome as the file now stands: the tests whose expectations were rewritten
    pass, marked updated."""
    import dataclasses

    if not any((outcome.file, t.index) in updated for t in outcome.tests):
        return outcome
    tests = tuple(
        dataclasses.replace(t, failures=(), updated=True)
        if (outcome.file, t.index) in updated
        else t
        for t in outcome.tests
    )
    return dataclasses.replace(outcome, tests=tests)


def _summary(outcomes: list[FileOutcome]) -> str:
    tests = [t for o in outcomes for t in o.tests]
    updated = sum(t.updated for t in tests)
    passed = sum(t.passed for t in tests) - updated
    failed = len(tests) - passed - updated
    parts = [f"{passed} passed"]
    if failed:
        parts.append(f"{failed} failed")
    if updated:
        parts.append(f"{updated} updated")
    unusable = sum(not o.usable for o in outcomes)
    if unusable:
        parts.append(f"{unusable} unusable test {'file' if unusable == 1 else 'files'}")
    files = len(outcomes)
    return f"{', '.join(parts)} in {files} {'file' if files == 1 else 'files'}"
