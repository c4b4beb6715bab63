"""The failure budget: parsing N and P%, and when a counter says the run must halt."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_cli.core.budget import FailureBudget, Halt, parse_failures
from choreo_cli.core.exit_codes import ExitCode
from choreo_cli.core.summary import RunSummary


@dataclass
class Ended:
    status: str
    line: int
    error: None = None


def feed(budget: FailureBudget, statuses: str) -> tuple[int, Halt] | None:
    """Feed records ending as ``statuses`` (f: failed, s: succeeded, i: invalid); the
    position (1-based) and Halt of the first record that spends the budget."""
    counter = budget.counter()
    kinds = {"f": "failed", "s": "succeeded", "i": "invalid", "c": "cancelled"}
    for position, kind in enumerate(statuses, 1):
        halt = counter.observe(Ended(kinds[kind], position))
        if halt is not None:
            return position, halt
    return None


def test_failures_are_a_count_or_a_percentage() -> None:
    assert parse_failures("10") == (10, None)
    assert parse_failures(3) == (3, None)
    assert parse_failures("2%") == (None, Fraction(2))
    assert parse_failures("0.5%") == (None, Fraction(1, 2))
    assert parse_failures("100%") == (None, Fraction(100))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "'0' is not at least 1"),
        (0, "0 is not at least 1"),
        ("-3", "'-3' is not a number of records (at least 1) or a percentage like '2%'"),
        ("2 %x", "'2 %x' is not a number"),
        ("%", "'%' is not a number"),
        ("0%", "'0%' is not a percentage above 0% and at most 100%"),
        ("101%", "'101%' is not a percentage above 0% and at most 100%"),
        (True, "True is a number"),
    ],
)
def test_bad_failures_say_how_to_write_them(text: str | int, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_failures(text)


def test_consecutive_failures_halt_at_the_kth_and_anything_else_breaks_the_run() -> None:
    budget = FailureBudget(consecutive=3)
    assert feed(budget, "ffsffiffcff") is None
    found = feed(budget, "ffsfff")
    assert found == (6, Halt("3 consecutive records failed (last: failed at line 6)", 6))


def test_a_count_halts_when_reached() -> None:
    found = feed(FailureBudget(failures=2), "sfsssf")
    assert found is not None and found[0] == 6
    assert found[1].reason == (
        "2 records failed, reaching the failure budget of 2 (last: failed at line 6)"
    )


def test_a_percentage_counts_once_min_records_ended() -> None:
    budget = FailureBudget(percent=Fraction(25), min_records=10)
    # 2 of the first 3 failed (67%): not counted before 10 records ended (2 of 10: 20%).
    assert feed(budget, "ffs" + "s" * 20) is None
    # 3 failures before min_records: the share is spent when the 10th record ends.
    found = feed(budget, "fffs" + "s" * 20)
    assert found is not None and found[0] == 10
    assert found[1] == Halt(
        "3 of 10 records failed (30%), reaching the failure budget of 25% (last: failed at line 3)",
        3,
    )


def test_invalid_and_cancelled_records_are_not_failures() -> None:
    assert feed(FailureBudget(failures=1), "iiccs") is None


def test_a_halted_run_exits_3_over_1_and_a_signal_wins() -> None:
    summary = RunSummary()
    summary.record_halt(Halt("why", 4))
    summary.record_halt(Halt("later", 9))
    assert summary.exit_code == ExitCode.HALTED == 3
    assert summary.to_json()["halted"] == {"reason": "why", "line": 4}
    summary.record_signal(2)
    assert summary.exit_code == ExitCode.INTERRUPTED


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(
    statuses=st.text(alphabet="fsi", max_size=60),
    failures=st.one_of(st.none(), st.integers(1, 10), st.sampled_from(["5%", "30%", "100%"])),
    min_records=st.integers(0, 40),
    consecutive=st.one_of(st.none(), st.integers(1, 6)),
    cuts=st.lists(st.integers(1, 60), max_size=8),
)
def test_clean_records_counted_as_a_number_halt_as_one_by_one(
    statuses: str,
    failures: int | str | None,
    min_records: int,
    consecutive: int | None,
    cuts: list[int],
) -> None:
    """The fused loop of `choreo run` sees a clean record only as part of a count: runs of
    them (cut wherever a list ends, and at min_records, as the run cuts its lists) counted
    with observe_clean give the Halt that observing each record gives."""
    budget = FailureBudget(min_records=min_records, consecutive=consecutive)
    if failures is not None:
        budget = budget.with_failures(failures)
    one_by_one = feed(budget, statuses)
    counter = budget.counter()
    ends = {*cuts, min_records}
    found = None
    pending = 0  # clean records not counted yet
    for position, kind in enumerate(statuses, 1):
        if kind == "s":
            pending += 1
            if position in ends:
                halt, pending = counter.observe_clean(pending), 0
                if halt is not None:
                    found = (position, halt)
                    break
            continue
        halt = counter.observe_clean(pending) or counter.observe(
            Ended({"f": "failed", "i": "invalid"}[kind], position)
        )
        pending = 0
        if halt is not None:
            found = (position, halt)
            break
    else:
        halt = counter.observe_clean(pending)
        if halt is not None:
            found = (len(statuses), halt)
    # The same Halt (reason and line); at the same record, but for a Halt at min_records
    # with no record of its own there (found where its run of clean records ends).
    assert (found is None) == (one_by_one is None)
    if found is not None and one_by_one is not None:
        assert found[1] == one_by_one[1]
        assert found[0] == one_by_one[0] or statuses[one_by_one[0] - 1] == "s"
