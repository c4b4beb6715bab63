"""The failure budget: when a run stops early because too many records failed.

A budget (``halt:`` in a pipeline file, or ``--max-failures`` and
``--max-consecutive-failures``) is a frozen value; ``FailureBudget.counter()`` gives the
object a run feeds with each Result as it ends, which says when the budget is spent.

Only records whose status is ``failed`` count as failures: an ``invalid`` line says
nothing about the target being written to, and ``cancelled`` is what a step or the run
decided. Any record that did not fail breaks a run of consecutive failures.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from typing import Any

_COUNT = re.compile(r"[0-9]+")
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")


@dataclasses.dataclass(frozen=True)
class Halt:
    """Why a run stopped early (``reason``, one line) and the input line of the record
    that made it stop (None when the record had no line)."""

    reason: str
    line: int | None

    def to_json(self) -> dict[str, Any]:
        """As the summary's ``halted`` holds it."""
        return {"reason": self.reason, "line": self.line}


@dataclasses.dataclass(frozen=True)
class FailureBudget:
    """How many failed records a run tolerates before it halts.

    ``failures``: halt once this many records failed; or ``percent``: once the failed
    records are this share (0 < P <= 100) of the records that ended. Either is
    counted only once at least ``min_records`` records ended. ``consecutive``: halt
    once this many records in a row failed (in the order they ended).

    >>> budget = FailureBudget(consecutive=2)
    >>> counter = budget.counter()
    >>> class R:
    ...     status, error, line = "failed", None, 7
    >>> counter.observe(R()) is None
    True
    >>> counter.observe(R()).reason
    '2 consecutive records failed (last: failed at line 7)'
    """

    failures: int | None = None
    percent: Fraction | None = None
    min_records: int = 0
    consecutive: int | None = None

    @property
    def active(self) -> bool:
        """Whether the budget can ever halt a run."""
        return self.failures is not None or self.percent is not None or bool(self.consecutive)

    def with_failures(self, text: str | int) -> FailureBudget:
        """This budget with ``failures`` (or ``percent``) given as N or 'P%' (``--max-failures``);
        raises ValueError with a message when the text is neither."""
        failures, percent = parse_failures(text)
        return dataclasses.replace(self, failures=failures, percent=percent)

    def with_consecutive(self, count: int) -> FailureBudget:
        """This budget with ``consecutive`` (``--max-consecutive-failures``)."""
        return dataclasses.replace(self, consecutive=count)

    def describe_failures(self) -> str | None:
        """``failures`` or ``percent`` as written: '10', '2.5%'; None when neither is set."""
        if self.percent is not None:
            return f"{float(self.percent):g}%"
        return None if self.failures is None else str(self.failures)

    def counter(self) -> FailureCounter:
        """A fresh count for one run."""
        return FailureCounter(self)


def parse_failures(text: str | int) -> tuple[int | None, Fraction | None]:
    """``(count, None)`` for N (at least 1) or ``(None, percent)`` for 'P%' (more than 0,
    at most 100); raises ValueError saying what is wrong and how to write it.

    >>> parse_failures("2.5%")
    (None, Fraction(5, 2))
    >>> parse_failures(10)
    (10, None)
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is {_HOW}")
    if isinstance(text, int):
        if text < 1:
            raise ValueError(f"{text} is not at least 1 — {_HOW}")
        return text, None
    stripped = text.strip()
    if _COUNT.fullmatch(stripped):
        count = int(stripped)
        if count < 1:
            raise ValueError(f"{text!r} is not at least 1 — {_HOW}")
        return count, None
    match = _PERCENT.fullmatch(stripped)
    if match is None:
        raise ValueError(f"{text!r} is not {_HOW}")
    percent = Fraction(match.group(1))
    if not 0 < percent <= 100:
        raise ValueError(f"{text!r} is not a percentage above 0% and at most 100%")
    return None, percent


_HOW = "a number of records (at least 1) or a percentage like '2%'"


class FailureCounter:
    """One run's count against a FailureBudget; ``observe`` each Result as it ends."""

    __slots__ = (
        "_consecutive",
        "_failures",
        "_last",
        "_min_records",
        "_percent",
        "budget",
        "ended",
        "failed",
        "streak",
    )

    def __init__(self, budget: FailureBudget) -> None:
        self.budget = budget
        self._failures = budget.failures
        self._percent = budget.percent
        self._min_records = budget.min_records
        self._consecutive = budget.consecutive or 0
        self.ended = 0
        self.failed = 0
        self.streak = 0
        self._last: tuple[str, int | None] | None = None  # the last failure: type, line

    def observe(self, result: Any) -> Halt | None:
        """Count one record that ended; a Halt when the budget is spent by it."""
        self.ended += 1
        if result.status != "failed":
            self.streak = 0
            if self.ended == self._min_records and self.failed:
                # The failures before min_records count from now on: they may be too many.
                return self._over_budget()
            return None
        self.failed += 1
        self.streak += 1
        error = result.error
        self._last = (error.type if error is not None else "failed", result.line)
        if self._consecutive and self.streak >= self._consecutive:
            return Halt(
                f"{self.streak} consecutive records failed ({self._said_last()})", result.line
            )
        if self.ended >= self._min_records:
            return self._over_budget()
        return None

    def observe_clean(self, count: int) -> Halt | None:
        """Count ``count`` records that ended without failing, known only as a number (the
        fused loop of ``choreo run`` builds no Result for a clean record); a Halt when they
        bring the count to ``min_records`` with too many failures before, as ``observe``
        would have said at that record."""
        if count <= 0:
            return None
        before = self.ended
        self.ended += count
        self.streak = 0
        if self.failed and before < self._min_records <= self.ended:
            ended, self.ended = self.ended, self._min_records
            try:
                return self._over_budget()
            finally:
                self.ended = ended
        return None

    def _over_budget(self) -> Halt | None:
        failed, ended = self.failed, self.ended
        assert self._last is not None
        if self._failures is not None and failed >= self._failures:
            reason = (
                f"{failed} records failed, reaching the failure budget of "
                f"{self._failures} ({self._said_last()})"
            )
        elif self._percent is not None and failed * 100 >= self._percent * ended:
            share = f"{failed * 100 / ended:.3g}%"
            reason = (
                f"{failed} of {ended} records failed ({share}), reaching the failure budget "
                f"of {self.budget.describe_failures()} ({self._said_last()})"
            )
        else:
            return None
        return Halt(reason, self._last[1])

    def _said_last(self) -> str:
        assert self._last is not None
        kind, line = self._last
        return f"last: {kind} at line {line}" if line is not None else f"last: {kind}"
