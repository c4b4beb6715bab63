"""The run summary: counts by status and step, timing, and every exit code."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from choreo_cli.core.coordinator import Coordinator, Step
from choreo_cli.core.exit_codes import ExitCode
from choreo_cli.core.summary import RunSummary
from choreo_cli.errors import Cancel, Skip
from choreo_cli.jsonl.reader import iter_items


def exists(ctx: Any, record: dict[str, Any]) -> None:
    if record.get("exists"):
        raise Skip("exists")
    if record.get("cancel_pre"):
        raise Cancel("no")


def create(ctx: Any, record: dict[str, Any]) -> int:
    if record.get("fail"):
        raise ValueError("bad")
    if record.get("cancel"):
        raise Cancel("closed")
    return 1


def line(ctx: Any, record: dict[str, Any]) -> None:
    return None


def run(data: bytes, *, dry_run: bool = False) -> RunSummary:
    coordinator = Coordinator(dry_run=dry_run)
    coordinator.add_step(Step(name="statement", precheck=exists, job=create))
    coordinator.add_step(Step(name="line", job=line))
    summary = RunSummary(["statement", "line"])
    for result in coordinator.run_many(iter_items(io.BytesIO(data))):
        summary.add(result)
    summary.finish()
    return summary


DATA = (
    b'{"id": 1}\n'
    b'{"id": 2}\n'
    b'{"exists": true}\n'
    b'{"fail": true}\n'
    b'{"cancel": true}\n'
    b'{"cancel_pre": true}\n'
    b"nope\n"
    b"[]\n"
)


def test_counts_by_status_and_step() -> None:
    summary = run(DATA)
    assert summary.counts == {"succeeded": 3, "failed": 1, "cancelled": 2, "invalid": 2}
    assert summary.total == 8
    assert summary.steps == {
        # ran: 2 clean + fail + cancel (the job was called); skipped: exists
        "statement": {"ran": 4, "skipped": 1, "failed": 1, "cancelled": 2, "would_run": 0},
        # ran: 2 clean + the one whose statement was skipped
        "line": {"ran": 3, "skipped": 0, "failed": 0, "cancelled": 0, "would_run": 0},
    }
    assert summary.exit_code == ExitCode.FAILED


def test_dry_run_counts_would_run() -> None:
    summary = run(b'{"id": 1}\n{"exists": true}\n', dry_run=True)
    assert summary.steps["statement"] == {
        "ran": 0,
        "skipped": 1,
        "failed": 0,
        "cancelled": 0,
        "would_run": 1,
    }
    assert summary.steps["line"]["would_run"] == 2
    assert summary.exit_code == ExitCode.OK


def test_to_json_has_the_figures_and_is_json() -> None:
    times = iter([10.0, 12.0])
    summary = RunSummary(["statement"], clock=lambda: next(times), now=lambda: 1796284800.5)
    summary.resumed = 5
    summary.record_run(pipeline="p.yaml", pipeline_sha256="ab" * 32, input="-")
    summary.finish()
    figures = summary.to_json()
    assert json.loads(json.dumps(figures)) == figures
    assert figures == {
        "pipeline": "p.yaml",
        "pipeline_sha256": "ab" * 32,
        "input": "-",
        "started_at": "2026-12-03T08:00:00.500000Z",
        "ended_at": "2026-12-03T08:00:02.500000Z",
        "records": {
            "total": 0,
            "succeeded": 0,
            "failed": 0,
            "cancelled": 0,
            "invalid": 0,
            "resumed": 5,
        },
        "steps": {
            "statement": {
                "ran": 0,
                "skipped": 0,
                "failed": 0,
                "cancelled": 0,
                "would_run": 0,
                "retries": 0,
                "precheck_errors": {},
                "time": {"precheck": None, "job": None},
            }
        },
        "wall_time": 2.0,
        "records_per_second": 0.0,
        "interrupted": None,
        "halted": None,
        "broken_pipe": False,
        "teardown_failed": False,
        "output_failed": False,
        "exit_code": 0,
        "error": None,
        "limits": {},
        "errors": [],
    }


def test_the_figures_of_each_limit_are_in_the_json_and_the_text() -> None:
    from choreo_cli.cli.console import format_summary

    summary = RunSummary()
    summary.record_limits(
        {
            "crm_api": {"waits": 12, "wait_seconds": 3.5, "workers": 2, "share": "25/s"},
            "warehouse": {"waits": 0, "wait_seconds": 0.0, "workers": 1, "share": 4},
        }
    )
    summary.finish()
    assert summary.to_json()["limits"]["crm_api"] == {
        "waits": 12,
        "wait_seconds": 3.5,
        "workers": 2,
        "share": "25/s",
    }
    lines = format_summary(summary).splitlines()
    assert "limit crm_api: 12 waits, 3.50 s waited (each of 2 workers: 25/s)" in lines
    assert "limit warehouse: 0 waits, 0.00 s waited" in lines
    summary.record_limits({"api": {"waits": 1, "wait_seconds": 0.25, "workers": 1, "share": 4}})
    assert "limit api: 1 wait, 0.25 s waited" in format_summary(summary).splitlines()


def test_records_per_second() -> None:
    times = iter([0.0, 4.0])
    summary = RunSummary(clock=lambda: next(times))
    for result in Coordinator().run_many(range(10)):
        summary.add(result)
    summary.finish()
    assert summary.records_per_second == 2.5
    assert summary.to_json()["records"]["succeeded"] == 10


def test_exit_0_when_every_record_succeeded() -> None:
    assert run(b'{"id": 1}\n{"exists": true}\n').exit_code == ExitCode.OK == 0


def test_exit_0_when_nothing_ran() -> None:
    assert run(b"").exit_code == 0


@pytest.mark.parametrize(
    "data", [b'{"fail": true}\n', b'{"cancel": true}\n', b"nope\n", b'"not an object"\n']
)
def test_exit_1_when_a_record_did_not_succeed(data: bytes) -> None:
    assert run(b'{"id": 1}\n' + data).exit_code == ExitCode.FAILED == 1


def test_exit_1_when_teardown_failed() -> None:
    summary = run(b'{"id": 1}\n')
    summary.record_teardown_failure()
    assert summary.exit_code == 1


def test_exit_1_when_the_output_failed() -> None:
    summary = run(b'{"id": 1}\n')
    summary.record_output_failure()
    assert summary.exit_code == 1


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["int", "term"]
)
@pytest.mark.parametrize("data", [b'{"id": 1}\n', b'{"fail": true}\n'], ids=["ok", "failed"])
def test_a_signal_wins_over_0_and_1(signum: int, code: int, data: bytes) -> None:
    summary = run(data)
    summary.record_teardown_failure()
    summary.record_signal(signum)
    summary.record_signal(signal.SIGINT)  # a later signal does not change the code
    assert summary.exit_code == code
    assert summary.to_json()["interrupted"] == signal.Signals(signum).name


@pytest.mark.parametrize("data", [b'{"id": 1}\n', b'{"fail": true}\n'], ids=["ok", "failed"])
def test_broken_pipe_is_141(data: bytes) -> None:
    summary = run(data)
    summary.record_broken_pipe()
    assert summary.exit_code == ExitCode.BROKEN_PIPE == 141


def test_exit_codes_are_the_documented_numbers() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "FAILED": 1,
        "USAGE": 2,
        "HALTED": 3,
        "INTERRUPTED": 130,
        "BROKEN_PIPE": 141,
        "TERMINATED": 143,
    }


def test_interrupted_records_are_cancelled() -> None:
    coordinator = Coordinator()
    coordinator.add_step(Step(name="a", job=line))
    summary = RunSummary(["a"])
    coordinator.interrupt()
    summary.add(coordinator.run({"id": 1}))
    assert summary.counts["cancelled"] == 1
    assert summary.steps["a"] == {
        "ran": 0,
        "skipped": 0,
        "failed": 0,
        "cancelled": 0,
        "would_run": 0,
    }


def test_write_json(tmp_path: Path) -> None:
    summary = run(b'{"id": 1}\nnope\n')
    path = tmp_path / "summary.json"
    summary.write_json(path)
    figures = json.loads(path.read_text(encoding="utf-8"))
    assert figures["records"]["invalid"] == 1
    assert figures["exit_code"] == 1
    assert figures == summary.to_json()


def test_a_run_refused_before_any_record_exits_2_with_its_error_and_zero_counts() -> None:
    summary = RunSummary(["statement"])
    summary.record_usage_error("p.yaml:4:5: unknown key 'jbo'")
    summary.finish()
    assert summary.exit_code == ExitCode.USAGE
    figures = summary.to_json()
    assert figures["exit_code"] == 2
    assert figures["error"] == "p.yaml:4:5: unknown key 'jbo'"
    assert figures["records"] == {
        "total": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "invalid": 0, "resumed": 0
    }  # fmt: skip
