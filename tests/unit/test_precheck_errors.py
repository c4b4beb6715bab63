"""A precheck raising something other than Skip or Cancel: a skip by default, a failure with
``precheck_errors: fail``; the summary's retries, precheck errors and error groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from choreo_cli import Cancel, Coordinator, RetryPolicy, Skip, Step, load_pipeline
from choreo_cli.cli.console import format_precheck_warnings, format_summary
from choreo_cli.core.items import InvalidLine
from choreo_cli.core.summary import RunSummary
from choreo_cli.pipeline.definitions import Pipeline

STEPS = """
import asyncio

from choreo_cli import Skip


def check(ctx, record):
    if record.get("skip"):
        raise Skip("on purpose")
    if record.get("bug"):
        return record["missing"]  # KeyError: a bug, not a decision
    return None


async def check_async(ctx, record):
    await asyncio.sleep(0)
    return check(ctx, record)


def job(ctx, record):
    return record["id"]
"""

RECORDS: list[dict[str, Any]] = [
    {"id": 1},
    {"id": 2, "bug": True},
    {"id": 3, "skip": True},
    {"id": 4, "bug": True},
]


def write_pipeline(tmp_path: Path, *, mode: str | None, precheck: str = "check") -> Path:
    (tmp_path / "pc_steps.py").write_text(STEPS, encoding="utf-8")
    setting = "" if mode is None else f"precheck_errors: {mode}\n"
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "version: 1\n"
        f"{setting}"
        "steps:\n"
        "  - name: invite\n"
        f"    precheck: pc_steps:{precheck}\n"
        "    job: pc_steps:job\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(tmp_path))

    def load(mode: str | None, precheck: str = "check") -> Pipeline:
        return load_pipeline(write_pipeline(tmp_path, mode=mode, precheck=precheck))

    yield load
    import sys

    sys.modules.pop("pc_steps", None)


@pytest.mark.parametrize("runner", ["compiled", "interpreted"])
@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("precheck", ["check", "check_async"])
def test_fail_makes_the_record_failed_at_its_precheck(
    loaded: Any, monkeypatch: pytest.MonkeyPatch, runner: str, workers: int, precheck: str
) -> None:
    monkeypatch.setenv("CHOREO_RUNNER", runner)
    pipeline = loaded("fail", precheck)
    assert pipeline.precheck_errors == "fail"
    with pipeline.coordinator(workers=workers) as coordinator:
        results = list(coordinator.run_many(RECORDS))
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded", "failed"]
    failed = results[1]
    assert failed.steps == {"invite": "failed"}
    assert failed.error is not None
    assert (failed.error.step, failed.error.phase, failed.error.type) == (
        "invite",
        "precheck",
        "KeyError",
    )
    assert [e.to_json()["type"] for e in failed.errors] == ["KeyError"]
    # Skip keeps its meaning.
    assert results[2].steps == {"invite": "skipped"}
    assert not failed.bag.has_job("invite")


@pytest.mark.parametrize("runner", ["compiled", "interpreted"])
@pytest.mark.parametrize("mode", [None, "skip"])
def test_skip_is_the_default_and_keeps_choreograph_semantics(
    loaded: Any, monkeypatch: pytest.MonkeyPatch, runner: str, mode: str | None
) -> None:
    monkeypatch.setenv("CHOREO_RUNNER", runner)
    pipeline = loaded(mode)
    assert pipeline.precheck_errors == "skip"
    with pipeline.coordinator() as coordinator:
        results = list(coordinator.run_many(RECORDS))
    assert [r.status for r in results] == ["succeeded"] * 4
    assert results[1].steps == {"invite": "skipped"}
    assert results[1].errors[0].type == "KeyError"


def test_the_run_option_overrides_the_file(loaded: Any) -> None:
    pipeline = loaded("fail").with_precheck_errors("skip")
    with pipeline.coordinator() as coordinator:
        assert [r.status for r in coordinator.run_many(RECORDS)] == ["succeeded"] * 4
    assert loaded("fail").with_precheck_errors(None).precheck_errors == "fail"
    pipeline = loaded(None).with_precheck_errors("fail")
    with pipeline.coordinator() as coordinator:
        assert coordinator.run(RECORDS[1]).status == "failed"


def test_cancel_and_skip_in_a_precheck_keep_their_meaning_with_fail(loaded: Any) -> None:
    def cancels(ctx: Any, record: Any) -> None:
        raise Cancel("stop")

    def skips(ctx: Any, record: Any) -> None:
        raise Skip("done")

    pipeline = loaded("fail")
    with pipeline.coordinator() as coordinator:
        flags = coordinator.plan.flags
    for precheck, status, outcome in (
        (cancels, "cancelled", "cancelled"),
        (skips, "succeeded", "skipped"),
    ):
        coordinator = Coordinator()
        coordinator.plan.flags.precheck_errors = flags.precheck_errors
        coordinator.add_step(Step(name="s", precheck=precheck, job=lambda ctx: 1))
        result = coordinator.run({})
        assert (result.status, result.steps) == (status, {"s": outcome})


# -- the summary ------------------------------------------------------------------------


def run_summary(coordinator: Coordinator, items: list[Any]) -> RunSummary:
    summary = RunSummary([s.name for s in coordinator.steps])
    for index, item in enumerate(items):
        summary.add(coordinator.run(item, index=index, line=index + 1))
    return summary


def flaky_coordinator(*, mode: str = "skip") -> Coordinator:
    """Step "push" fails the first attempt of each record whose "flaky" is set."""
    tried: set[int] = set()

    def push(ctx: Any, record: Any) -> int:
        if record.get("flaky") and record["id"] not in tried:
            tried.add(record["id"])
            raise ConnectionError("try again")
        if record.get("down"):
            raise ConnectionError("down")
        return 1

    def lookup(ctx: Any, record: Any) -> Any:
        if record.get("bug"):
            return record["missing"]
        if record.get("type_bug"):
            return record["id"] + "x"
        if record.get("skip"):
            raise Skip("exists")
        return None

    coordinator = Coordinator(timings=False)
    coordinator.plan.flags.precheck_errors = mode  # type: ignore[assignment]
    coordinator.add_step(Step(name="lookup", precheck=lookup, job=lambda ctx: 0))
    coordinator.add_step(Step(name="push", job=push, retry=RetryPolicy(attempts=3, delay=0)))
    return coordinator


def test_retries_count_records_that_succeeded_after_a_retry() -> None:
    records = [
        {"id": 1},
        {"id": 2, "flaky": True},  # succeeds on its 2nd attempt: 1 retry
        {"id": 3},
        {"id": 4, "down": True},  # fails 3 times: 2 retries
        {"id": 5, "flaky": True, "skip": True},  # skipped lookup, push retried once
    ]
    summary = run_summary(flaky_coordinator(), records)
    assert summary.counts == {"succeeded": 4, "failed": 1, "cancelled": 0, "invalid": 0}
    assert summary.retries == {"push": 4}
    steps = summary.to_json()["steps"]
    assert steps["push"]["retries"] == 4
    assert steps["lookup"]["retries"] == 0
    assert "retries" in format_summary(summary).splitlines()[1]


def test_no_retries_column_without_retries() -> None:
    summary = run_summary(flaky_coordinator(), [{"id": 1}, {"id": 2, "skip": True}])
    assert summary.retries == {}
    header = format_summary(summary).splitlines()[1]
    assert "retries" not in header
    assert "precheck errors" not in header


def test_precheck_errors_by_step_and_type_with_their_first_line() -> None:
    records = [
        {"id": 1},
        {"id": 2, "skip": True},
        {"id": 3, "type_bug": True},  # line 3: TypeError
        {"id": 4, "bug": True},  # line 4: KeyError
        {"id": 5, "bug": True, "down": True},  # KeyError skipped lookup; push failed
        {"id": 6, "bug": True},
    ]
    summary = run_summary(flaky_coordinator(), records)
    assert summary.precheck_errors == {
        "lookup": {
            "TypeError": {"count": 1, "first_line": 3},
            "KeyError": {"count": 3, "first_line": 4},
        }
    }
    figures = summary.to_json()
    assert figures["steps"]["lookup"]["precheck_errors"] == summary.precheck_errors["lookup"]
    assert figures["steps"]["push"]["precheck_errors"] == {}
    assert figures["steps"]["lookup"]["skipped"] == 5
    assert format_precheck_warnings(summary) == [
        "step 'lookup': precheck raised TypeError on 1 record, first at line 3 "
        "(treated as a skip; raise Skip to skip on purpose)",
        "step 'lookup': precheck raised KeyError on 3 records, first at line 4 "
        "(treated as a skip; raise Skip to skip on purpose)",
    ]
    assert "  4: TypeError 1, KeyError 3" in format_summary(summary).splitlines()[2]


def test_with_fail_precheck_errors_are_failures_and_not_warned_about() -> None:
    records = [{"id": 1}, {"id": 2, "bug": True}, {"id": 3, "bug": True}]
    summary = run_summary(flaky_coordinator(mode="fail"), records)
    assert summary.counts["failed"] == 2
    assert summary.precheck_errors == {"lookup": {"KeyError": {"count": 2, "first_line": 2}}}
    assert format_precheck_warnings(summary) == []
    lookup = summary.steps["lookup"]
    # The job was not called: the step failed at its precheck.
    assert (lookup["ran"], lookup["failed"], lookup["skipped"]) == (1, 2, 0)
    assert summary.errors == [
        {"step": "lookup", "phase": "precheck", "type": "KeyError", "count": 2, "first_line": 2}
    ]


def test_error_groups_most_frequent_first_ties_first_seen() -> None:
    coordinator = flaky_coordinator()

    def cancel(ctx: Any, record: Any) -> None:
        if record.get("cancel"):
            raise Cancel("no")

    coordinator.add_step(Step(name="last", precheck=cancel, job=lambda ctx: 0))
    items: list[Any] = [
        {"id": 1, "cancel": True},  # line 1: cancelled in last's precheck
        {"id": 2, "down": True},  # line 2: push, ConnectionError
        InvalidLine(3, ValueError("not JSON"), b"{", 2),  # line 3: invalid
        {"id": 4, "down": True},
        {"id": 5, "cancel": True},
        {"id": 6, "down": True},
        InvalidLine(7, ValueError("not JSON"), b"{", 6),
        {"id": 8},
    ]
    summary = RunSummary([s.name for s in coordinator.steps])
    for index, item in enumerate(items):
        if isinstance(item, InvalidLine):
            summary.add(coordinator.run(item, index=index))
        else:
            summary.add(coordinator.run(item, index=index, line=index + 1))
    errors = summary.to_json()["errors"]
    assert errors == [
        {"step": "push", "phase": "job", "type": "ConnectionError", "count": 3, "first_line": 2},
        # Two each: the cancelled records were seen first.
        {"step": "last", "phase": "precheck", "type": "Cancel", "count": 2, "first_line": 1},
        # An input line's phase is no step's phase.
        {"step": None, "phase": None, "type": "ValueError", "count": 2, "first_line": 3},
    ]
    assert summary.counts == {"succeeded": 1, "failed": 3, "cancelled": 2, "invalid": 2}


def test_groups_stay_few_however_many_records() -> None:
    coordinator = flaky_coordinator()
    summary = RunSummary([s.name for s in coordinator.steps])
    for index in range(500):
        summary.add(
            coordinator.run({"id": index, "bug": True, "down": True}, index=index, line=index + 1)
        )
    assert summary.errors == [
        {"step": "push", "phase": "job", "type": "ConnectionError", "count": 500, "first_line": 1}
    ]
    assert summary.precheck_errors == {"lookup": {"KeyError": {"count": 500, "first_line": 1}}}
    assert len(summary._errors) == 1


def test_first_line_is_the_lowest_when_records_end_out_of_order() -> None:
    coordinator = flaky_coordinator()
    summary = RunSummary([s.name for s in coordinator.steps])
    for line in (9, 4, 7):
        summary.add(coordinator.run({"id": line, "bug": True}, index=line - 1, line=line))
    assert summary.precheck_errors["lookup"]["KeyError"] == {"count": 3, "first_line": 4}


def test_a_warning_without_a_known_line_leaves_the_line_out() -> None:
    coordinator = flaky_coordinator()
    summary = RunSummary([s.name for s in coordinator.steps])
    summary.add(coordinator.run({"id": 1, "bug": True}))
    assert format_precheck_warnings(summary) == [
        "step 'lookup': precheck raised KeyError on 1 record "
        "(treated as a skip; raise Skip to skip on purpose)"
    ]


def test_a_step_name_is_printable_in_the_warning() -> None:
    coordinator = Coordinator()
    coordinator.add_step(Step(name="in\x1b[2Kvite", precheck=lambda ctx, r: r["x"], job=print))
    summary = RunSummary([s.name for s in coordinator.steps])
    summary.add(coordinator.run({}, index=0, line=1))
    [line] = format_precheck_warnings(summary)
    assert line.startswith("step 'in\\x1b[2Kvite': precheck raised KeyError on 1 record")


def test_a_skip_subclass_from_a_worker_process_is_still_a_skip() -> None:
    from choreo_cli.executors.portable import export_exception, rebuild_exception

    class Exists(Skip):
        pass

    class Refused(Cancel):
        pass

    skip = rebuild_exception(export_exception(Exists("there")))
    assert isinstance(skip, Skip)
    assert (type(skip).__name__, str(skip)) == ("Exists", "there")
    assert isinstance(rebuild_exception(export_exception(Refused("no"))), Cancel)
    assert not isinstance(rebuild_exception(export_exception(KeyError("k"))), Skip)
    # Sent on again (a Dask task retried elsewhere), it stays one.
    assert isinstance(rebuild_exception(export_exception(skip)), Skip)
