"""Reporters for `choreo test`: text, json, github and junit, each writing to a stream it is given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from choreo_cli.cli.escapes import github_command, json_text, printable

if TYPE_CHECKING:
    from choreo_cli.pipeline.problems import Problem
    from choreo_cli.testing.outcomes import FileOutcome, TestFailure, TestOutcome


class TestReporter:
    """Writes the outcomes of every test file to ``stream``; ``quiet`` leaves out what passed."""

    __test__ = False  # not a pytest class

    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet

    def report(self, outcomes: Sequence[FileOutcome]) -> None:
        """Write the report."""
        raise NotImplementedError


class TextReporter(TestReporter):
    """``FILE:LINE:COL: message`` per problem and per failure (a short diff under nested
    values), then one line per file; control characters escaped.

    >>> import io; from choreo_cli.testing.outcomes import FileOutcome, TestOutcome
    >>> out = io.StringIO()
    >>> TextReporter(out).report([FileOutcome("t.test.yaml", (), (TestOutcome(0, "a", 3, 5, (), (), 0, 0.1),))])
    >>> out.getvalue()
    't.test.yaml: 1 passed\\n'
    """

    def report(self, outcomes: Sequence[FileOutcome]) -> None:
        write = self.stream.write
        for outcome in outcomes:
            for problem in outcome.problems:
                write(f"{printable(str(problem))}\n")
            for test in outcome.tests:
                for failure in test.failures:
                    where = f"{outcome.file}:{failure.line}:{failure.column}"
                    write(f"{printable(where)}: {printable(failure.message)}\n")
                    for line in failure.diff:
                        write(f"    {printable(line)}\n")
                if test.failures and test.log:
                    write(f"    what test '{printable(test.name)}' logged:\n")
                    for line in test.log:
                        write(f"    {printable(line)}\n")
            if not outcome.usable:
                write(f"{printable(outcome.file)}: not run (the test file is unusable)\n")
            elif not self.quiet or not outcome.passed:
                write(f"{printable(outcome.file)}: {counts_text(outcome.tests)}\n")


class JsonReporter(TestReporter):
    """One JSON document: ``{"passed": ..., "counts": {...}, "files": [...]}``; each failure
    with its line, column, record, path, expected and actual value."""

    def report(self, outcomes: Sequence[FileOutcome]) -> None:
        tests = [t for o in outcomes for t in o.tests]
        document = {
            "passed": all(o.passed for o in outcomes),
            "counts": {
                "passed": sum(t.passed for t in tests),
                "failed": sum(not t.passed for t in tests),
                "updated": sum(t.updated for t in tests),
                "unusable_files": sum(not o.usable for o in outcomes),
            },
            "files": [
                {
                    "file": o.file,
                    "usable": o.usable,
                    "passed": o.passed,
                    "problems": [_problem_json(p) for p in o.problems],
                    "tests": [_test_json(t) for t in o.tests],
                }
                for o in outcomes
            ],
        }
        self.stream.write(json_text(document, indent=2) + "\n")


class GithubReporter(TestReporter):
    """GitHub Actions workflow commands: ``::error file=F,line=L,col=C,title=T::message``,
    one per problem and per failure (nothing for what passed)."""

    def report(self, outcomes: Sequence[FileOutcome]) -> None:
        for outcome in outcomes:
            for p in outcome.problems:
                self._command(p.severity, p.file, p.line, p.column, "choreo test", p.message)
            for test in outcome.tests:
                for failure in test.failures:
                    message = "\n".join([failure.message, *failure.diff])
                    title = f"choreo test: {test.name}"
                    self._command(
                        "error", outcome.file, failure.line, failure.column, title, message
                    )

    def _command(
        self, severity: str, file: str, line: int, column: int, title: str, message: str
    ) -> None:
        self.stream.write(
            github_command(severity, message, file=file, line=line, column=column, title=title)
        )


class JunitReporter(TestReporter):
    """A JUnit XML report: a ``testsuite`` per test file, a ``testcase`` per test (an
    unusable file: one ``testcase`` with an ``error``), a ``failure`` per failed test."""

    def report(self, outcomes: Sequence[FileOutcome]) -> None:
        import xml.etree.ElementTree as ET

        root = ET.Element("testsuites", {"name": "choreo test"})
        totals = {"tests": 0, "failures": 0, "errors": 0, "time": 0.0}
        for outcome in outcomes:
            suite = ET.SubElement(root, "testsuite", {"name": _xml(outcome.file)})
            counts = {"tests": 0, "failures": 0, "errors": 0, "time": 0.0}
            if not outcome.usable:
                case = ET.SubElement(
                    suite,
                    "testcase",
                    {"classname": _xml(outcome.file), "name": "(test file)", "time": "0"},
                )
                text = "\n".join(str(p) for p in outcome.problems if p.is_error)
                error = ET.SubElement(
                    case,
                    "error",
                    {"type": "unusable", "message": _xml(text.splitlines()[0] if text else "")},
                )
                error.text = _xml(text, multiline=True)
                counts["tests"] += 1
                counts["errors"] += 1
            for test in outcome.tests:
                counts["tests"] += 1
                counts["time"] += test.duration
                case = ET.SubElement(
                    suite,
                    "testcase",
                    {
                        "classname": _xml(outcome.file),
                        "name": _xml(test.name),
                        "time": f"{test.duration:.6f}",
                        "file": _xml(outcome.file),
                        "line": str(test.line),
                    },
                )
                if test.passed:
                    continue
                kind = "error" if test.errored else "failure"
                counts["errors" if test.errored else "failures"] += 1
                element = ET.SubElement(
                    case,
                    kind,
                    {"type": kind, "message": _xml(test.failures[0].message)},
                )
                element.text = _xml(
                    "\n".join(_failure_lines(outcome.file, test.failures)), multiline=True
                )
                if test.log:
                    logged = ET.SubElement(case, "system-err")
                    logged.text = _xml("\n".join(test.log), multiline=True)
            for key, value in counts.items():
                suite.set(key, f"{value:.6f}" if key == "time" else str(value))
                totals[key] += value
        for key, value in totals.items():
            root.set(key, f"{value:.6f}" if key == "time" else str(int(value)))
        ET.indent(root)
        text = ET.tostring(root, encoding="unicode", xml_declaration=False)
        self.stream.write('<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n")


def counts_text(tests: Sequence[TestOutcome]) -> str:
    """``3 passed, 1 failed`` (``, 1 updated`` after ``--update``; or ``no test selected``)."""
    updated = sum(t.updated for t in tests)
    passed = sum(t.passed for t in tests) - updated
    failed = len(tests) - passed - updated
    if not tests:
        return "no test selected"
    parts = [f"{passed} passed"] if passed else []
    if failed:
        parts.append(f"{failed} failed")
    if updated:
        parts.append(f"{updated} updated")
    return ", ".join(parts)


def _failure_lines(file: str, failures: Sequence[TestFailure]) -> list[str]:
    lines = []
    for failure in failures:
        lines.append(f"{file}:{failure.line}:{failure.column}: {failure.message}")
        lines.extend(f"    {line}" for line in failure.diff)
    return lines


def _xml(text: str, *, multiline: bool = False) -> str:
    # XML 1.0 cannot hold most control characters at all: escape them as for people.
    return printable(text, multiline=multiline)


def _problem_json(p: Problem) -> dict[str, Any]:
    return {
        "file": p.file,
        "line": p.line,
        "column": p.column,
        "severity": p.severity,
        "message": p.message,
    }


def _test_json(test: TestOutcome) -> dict[str, Any]:
    return {
        "name": test.name,
        "line": test.line,
        "column": test.column,
        "passed": test.passed,
        "updated": test.updated,
        "duration": round(test.duration, 6),
        "exit_code": test.exit_code,
        "log": list(test.log),
        "failures": [
            {
                "line": f.line,
                "column": f.column,
                "kind": f.kind,
                "message": f.message,
                "record": f.record,
                "path": f.path,
                **({"expected": f.expected, "actual": f.actual} if f.kind == "mismatch" else {}),
                **({} if f.has_actual else {"actual_missing": True}),
            }
            for f in test.failures
        ],
    }


REPORTERS: dict[str, type[TestReporter]] = {
    "text": TextReporter,
    "json": JsonReporter,
    "github": GithubReporter,
    "junit": JunitReporter,
}
