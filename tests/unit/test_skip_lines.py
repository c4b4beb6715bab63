"""Records that ran every step with some jobs skipped (a re-run's common case) take a
shortcut in the writer, the fused loop and the workers (a line template per SkipPattern)
and in the summary (a count per pattern): their lines and counts must be those of the
general path, for any outcomes, whichever part wrote them."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_batching_order import InProcess, picker

from choreo_cli import load_pipeline
from choreo_cli.core.coordinator import Coordinator, Step
from choreo_cli.core.items import Record
from choreo_cli.core.result import Result
from choreo_cli.core.summary import STEP_COUNTS, RunSummary
from choreo_cli.errors import Cancel, Skip
from choreo_cli.jsonl.line_runner import run_lines
from choreo_cli.jsonl.reader import JsonlReader
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


@settings(max_examples=75, derandomize=True, deadline=None)
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


# -- every part that writes a skip pattern's lines writes the same bytes ------------------

PATTERN_STEPS = """
    from choreo_cli import Skip


    class Exists(Skip):
        \"\"\"A Skip of the user's own: its type is in the line, not Skip.\"\"\"


    def precheck_for(k):
        def precheck(ctx, record):
            kind, message = record[k]
            if kind == "skip":
                raise Skip(message)
            if kind == "exists":
                raise Exists(message)
            if kind == "surrogate":  # not UTF-8: the line escapes it
                raise Skip(message + "\\udcff")
            if kind == "error":  # skips the job too; its type is in the line
                raise LookupError(message)

        return precheck


    first, second, third = (precheck_for(k) for k in range(3))


    def job(ctx, record):
        return None
"""

PATTERN_PIPELINE = """
    version: 1
    steps:
      - name: first
        precheck: pattern_steps:first
        job: pattern_steps:job
      - name: 'quote " %d %s'
        precheck: pattern_steps:second
        job: pattern_steps:job
      - name: ünï
        precheck: pattern_steps:third
        job: pattern_steps:job
"""

KINDS = ["ok", "skip", "skip", "skip", "exists", "surrogate", "error"]
pattern_records = st.lists(
    st.lists(
        st.tuples(st.sampled_from(KINDS), st.text(alphabet='ab %"\\é\0', max_size=4)),
        min_size=3,
        max_size=3,
    ),
    max_size=30,
)


@pytest.fixture(scope="module")
def pattern_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("patterns")
    (root / "pattern_steps.py").write_text(textwrap.dedent(PATTERN_STEPS), encoding="utf-8")
    path = root / "pipeline.yaml"
    path.write_text(textwrap.dedent(PATTERN_PIPELINE), encoding="utf-8")
    return path


Written = tuple[bytes, dict[str, int], dict[str, dict[str, int]], int]


def summed(summary: RunSummary, lines: list[bytes], tallied: int) -> Written:
    return b"".join(lines), summary.counts, summary.steps, tallied


def through_run_many(path: Path, data: bytes, dry_run: bool) -> Written:
    """Every record's Result, encoded field by field and counted one by one."""
    pipeline = load_pipeline(path)
    with pipeline.coordinator(workers=1, timings=False, dry_run=dry_run) as coordinator:
        results = list(coordinator.run_many(JsonlReader(io.BytesIO(data))))
        summary = RunSummary(step.name for step in coordinator.steps)
    writer = ResultWriter(io.BytesIO())
    lines = [writer.encoder.encode_full(result) for result in results]
    writer.close()
    for result in results:
        summary.add(result)
    return summed(summary, lines, 0)


def through_run_lines(runner: Any, data: bytes) -> Written:
    """`choreo run`'s loop: lines put or emitted, stand-ins tallied, clean records counted."""
    writer = ResultWriter(io.BytesIO())
    summary = RunSummary(step.name for step in runner.steps)
    lines: list[bytes] = []
    tallied: list[Result] = []

    def emit(result: Result) -> bool:
        lines.append(writer.encoder.encode(result))
        summary.add(result)
        return False

    def tally(result: Result) -> None:
        tallied.append(result)
        summary.add(result)

    clean_line = writer.clean_line(runner.clean_steps())
    assert clean_line is not None
    batches = JsonlReader(io.BytesIO(data)).iter_line_lists(max_lines=4)
    for clean in runner.run_lines(
        batches, clean_line=clean_line, put=lines.append, emit=emit, tally=tally
    ):
        summary.add_clean(clean, runner.clean_steps())
    writer.close()
    return summed(summary, lines, len(tallied))


class Fused:
    """The thread executor's fused loop (run_lines) over one coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.steps = coordinator.steps
        self.clean_steps = coordinator.clean_steps

    def run_lines(self, batches: Any, **options: Any) -> Any:
        return run_lines(self.coordinator, batches, **options)


def through_every_part(
    path: Path, data: bytes, dry_run: bool, pick: Any
) -> tuple[Written, Written, Written]:
    """(run_many, the fused loop, process-style workers) for the same lines."""
    general = through_run_many(path, data, dry_run)
    pipeline = load_pipeline(path)
    with pipeline.coordinator(workers=1, timings=False, dry_run=dry_run) as coordinator:
        fused = through_run_lines(Fused(coordinator), data)
    with InProcess(path, pick, dry_run=dry_run) as executor:
        workers = through_run_lines(executor, data)
    return general, fused, workers


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pattern_records, st.booleans(), st.data())
def test_the_fused_loop_and_the_workers_write_and_count_each_pattern_as_run_many(
    pattern_pipeline: Path, records: list[Any], dry_run: bool, data: st.DataObject
) -> None:
    text = b"".join(json.dumps(record).encode() + b"\n" for record in records)
    general, fused, workers = through_every_part(pattern_pipeline, text, dry_run, picker(data))
    assert fused[:3] == general[:3]
    assert workers[:3] == general[:3]


def test_a_pattern_is_one_key_for_the_fused_loop_the_workers_and_the_summary(
    pattern_pipeline: Path,
) -> None:
    """Two patterns interleaved, a Skip subclass first and later in a pattern, a message
    that is not UTF-8: every part writes run_many's bytes and counts its counts, and both
    the fused loop and the workers write most lines from their templates."""
    skip, exists = ["skip", "m%s"], ["exists", 'ex "%d"']
    records = []
    for i in range(40):
        pattern = [skip, ["ok", ""], skip] if i % 2 else [["ok", ""], skip, skip]
        if i in (0, 7, 30):
            pattern = [exists, ["ok", ""], skip]  # Exists where the others of 1, 3... Skip
        if i == 12:
            pattern = [["ok", ""], ["surrogate", "x"], skip]
        records.append([[kind, f"{message} {i}"] for kind, message in pattern])
    text = b"".join(json.dumps(record).encode() + b"\n" for record in records)
    general, fused, workers = through_every_part(
        pattern_pipeline, text, False, lambda in_flight: (in_flight - 1, 2)
    )
    assert fused[:3] == general[:3]
    assert workers[:3] == general[:3]
    lines = general[0].splitlines()
    assert lines[7].count(b'"type":"Exists"') == 1 and lines[9].count(b'"type":"Skip"') == 2
    assert general[1]["succeeded"] == 40
    # Written from a template: all but the Exists and not-UTF-8 ones (4); in the fused
    # loop, the first of each of the two patterns is emitted too (it teaches the pattern).
    assert (fused[3], workers[3]) == (40 - 4 - 2, 40 - 4)
