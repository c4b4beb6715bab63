"""Records that ran every step with some jobs skipped (a re-run's common case) take a
shortcut in the writer (a template per skip pattern) and the summary (a count per
pattern): their lines and counts must be those of the general path, for any outcomes."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_cli.core.coordinator import Coordinator, Step
from choreo_cli.core.items import Record
from choreo_cli.core.summary import STEP_COUNTS, RunSummary
from choreo_cli.errors import Cancel, Skip
from choreo_cli.jsonl.writer import ResultWriter

NAMES = ["first", "Second step", 'quote " %d %s', "ünï"]
PRECHECKS = {
    "ok": lambda message: None,
    "skip": lambda message: Skip(message),
    "skip with data": lambda message: Skip(message, data={"id": 1}),
    "error": lambda message: ValueError(message),
    "cancel": lambda message: Cancel(message),
}
JOBS = {"ok": None, "fail": ValueError, "cancel": Cancel}

outcome_tables = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(PRECHECKS)),
            st.sampled_from(sorted(JOBS)),
            st.text(max_size=8),
        ),
        min_size=len(NAMES),
        max_size=len(NAMES),
    ),
    min_size=1,
    max_size=12,
)


def build(table: list[list[tuple[str, str, str]]], dry_run: bool) -> Coordinator:
    def precheck_for(k: int) -> Any:
        def precheck(ctx: Any, record: int) -> None:
            kind, _, message = table[record][k]
            exc = PRECHECKS[kind](message)
            if exc is not None:
                raise exc

        return precheck

    def job_for(k: int) -> Any:
        def job(ctx: Any, record: int) -> int:
            kind = table[record][k][1]
            if JOBS[kind] is not None:
                raise JOBS[kind]("job says no")
            return k

        return job

    coordinator = Coordinator(dry_run=dry_run, timings=False)
    for k, name in enumerate(NAMES):
        coordinator.add_step(Step(name=name, job=job_for(k), precheck=precheck_for(k)))
    return coordinator


def reference_steps(results: list[Any]) -> dict[str, dict[str, int]]:
    """Step counts from each result's step outcomes, one by one."""
    steps = {name: dict.fromkeys(STEP_COUNTS, 0) for name in NAMES}
    for result in results:
        for name, outcome in result.steps.items():
            counts = steps[name]
            if outcome in ("succeeded", "failed"):
                counts["ran"] += 1
            if outcome in ("failed", "skipped", "cancelled", "would_run"):
                counts[outcome] += 1
            if outcome == "cancelled" and result.error.step == name and result.error.phase == "job":
                counts["ran"] += 1
    return steps


@settings(max_examples=150, derandomize=True, deadline=None)
@given(outcome_tables, st.booleans(), st.booleans())
def test_lines_and_counts_equal_the_general_paths(
    table: list[list[tuple[str, str, str]]], dry_run: bool, with_lines: bool
) -> None:
    with build(table, dry_run) as coordinator:
        items = [Record(i, i + 3 if with_lines else None) for i in range(len(table))]
        results = list(coordinator.run_many(items))
    summary = RunSummary(NAMES)
    for include_input in (False, True):
        writer = ResultWriter(io.BytesIO(), include_input=include_input)
        for result in results:
            # Twice: the second time from the template the first one made.
            assert writer.encoder.encode(result) == writer.encoder.encode_full(result)
            assert writer.encoder.encode(result) == writer.encoder.encode_full(result)
        writer.close()
    for result in results:
        summary.add(result)
    assert summary.steps == reference_steps(results)
    statuses = [result.status for result in results]
    assert summary.counts == {s: statuses.count(s) for s in summary.counts}
    assert summary.total == len(results)
