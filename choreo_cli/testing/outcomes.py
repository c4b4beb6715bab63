"""What running the tests gave: per test its failures and what happened, per file its tests
or the problems that made it unusable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from choreo_cli.pipeline.problems import Problem

FailureKind = Literal["mismatch", "error"]


@dataclass(frozen=True)
class TestFailure:
    """One thing a test found wrong, at the position of the failing expectation.

    ``kind`` is "mismatch" (a record, the number of records or the exit code is not as
    expected) or "error" (the test could not run: a resource's factory raised, the
    pipeline did not load with the test's environment, ``--timeout`` passed). For a
    mismatch, ``path`` is where inside the record's result (``steps.create``),
    ``expected``/``actual`` the values there (``has_actual`` False: the result has no
    such key), and ``diff`` a short diff when the values are nested.
    """

    __test__ = False  # not a pytest class

    line: int
    column: int
    kind: FailureKind
    message: str
    record: int | None = None
    path: str | None = None
    expected: Any = None
    actual: Any = None
    has_actual: bool = True
    diff: tuple[str, ...] = ()


@dataclass(frozen=True)
class TestOutcome:
    """One test's outcome: its failures (none: it passed), what each record's result line
    was (as ``choreo run --include-input --include-data`` writes it) and the exit code
    ``choreo run`` would have given (None when the test could not run)."""

    __test__ = False  # not a pytest class

    index: int
    name: str
    line: int
    column: int
    failures: tuple[TestFailure, ...]
    results: tuple[dict[str, Any], ...]
    exit_code: int | None
    duration: float
    had_exit_code: bool = False
    # What choreo and the steps logged during the test (WARNING and above), one line each
    # (``LEVEL logger: message``): shown with a failure, kept quiet for a test that passed.
    log: tuple[str, ...] = ()
    # ``choreo test --update`` rewrote this test's expectations to what happened: it passes
    # against the file as it is now (its failures are what the rewrite changed: not shown).
    updated: bool = False

    @property
    def passed(self) -> bool:
        """True when nothing was found wrong."""
        return not self.failures

    @property
    def errored(self) -> bool:
        """True when the test could not run (rather than ran and mismatched)."""
        return any(f.kind == "error" for f in self.failures)

    def expectations(self) -> list[dict[str, Any]]:
        """What ``--update`` writes as ``expect:``: per record its status and steps, its
        errors and attempts when it has some, and the non-empty parts of its data bag
        (index, line and input are left out: they follow from the input)."""
        written = []
        for result in self.results:
            entry: dict[str, Any] = {"status": result["status"], "steps": result["steps"]}
            if result.get("errors"):
                entry["errors"] = result["errors"]
            if result.get("attempts"):
                entry["attempts"] = result["attempts"]
            data = {k: v for k, v in (result.get("data") or {}).items() if v}
            if data:
                entry["data"] = data
            written.append(entry)
        return written


@dataclass(frozen=True)
class FileOutcome:
    """A test file's outcome: the problems that made it unusable (errors: no test ran), or
    the outcome of each test selected."""

    file: str
    problems: tuple[Problem, ...] = ()
    tests: tuple[TestOutcome, ...] = ()

    @property
    def usable(self) -> bool:
        """False when the file could not be read or checked (``choreo test`` exits 2)."""
        return not any(p.is_error for p in self.problems)

    @property
    def passed(self) -> bool:
        """True when the file is usable and every test selected passed."""
        return self.usable and all(t.passed for t in self.tests)
