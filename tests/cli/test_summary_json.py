"""`choreo run --summary-json`: the run's fields (pipeline and its sha256, input, start and
end), on every exit, fitting schemas/summary.schema.json under every executor."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema

from tests.cli.conftest import ROOT

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py

SUMMARY_SCHEMA = json.loads((ROOT / "schemas" / "summary.schema.json").read_text("utf-8"))
_VALIDATOR = jsonschema.Draft202012Validator(
    SUMMARY_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)

STEPS = """\
from choreo_cli import Skip


def exists(ctx, record):
    if record.get("exists"):
        raise Skip("exists")


def create(ctx, record):
    if record.get("fail"):
        raise ValueError("bad")
"""

PIPELINE = """\
version: 1
steps:
  - name: create
    precheck: steps:exists
    job: steps:create
  - name: notify
    job: steps:create
"""

INPUT = b'{"id": 1}\n{"id": 2, "exists": true}\n{"id": 3, "fail": true}\nnot json\n{"id": 5}\n'


def read_summary(path: Path) -> dict[str, Any]:
    """The summary file, checked against schemas/summary.schema.json."""
    summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    errors = sorted(_VALIDATOR.iter_errors(summary), key=str)
    assert not errors, f"the summary does not fit summary.schema.json: {errors[0]}"
    return summary


def _moment(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc
    )


def _check_run_fields(summary: dict[str, Any], pipeline: Path, *, input: str) -> None:
    assert summary["pipeline"] == pipeline.name
    assert summary["pipeline_sha256"] == hashlib.sha256(pipeline.read_bytes()).hexdigest()
    assert summary["input"] == input
    started, ended = _moment(summary["started_at"]), _moment(summary["ended_at"])
    now = datetime.datetime.now(datetime.timezone.utc)
    assert now - datetime.timedelta(minutes=5) < started <= ended <= now
    assert abs((ended - started).total_seconds() - summary["wall_time"]) < 1e-5


def test_the_summary_fits_its_schema_and_counts_the_same_under_every_executor(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    pipeline = write_pipeline(PIPELINE, STEPS)
    (tmp_path / "in.jsonl").write_bytes(INPUT)
    summaries = {}
    for executor, timeout in (("thread", 30), ("process", 30), ("dask", 90)):
        name = f"{executor}.json"
        args = ["run", "pipeline.yaml", "-i", "in.jsonl", "-q", "--summary-json", name]
        run = run_choreo([*args, "--executor", executor, "-w", "2"], timeout=timeout)
        assert run.code == 1, run.stderr
        summaries[executor] = summary = read_summary(tmp_path / name)
        _check_run_fields(summary, pipeline, input="in.jsonl")
        assert (summary["exit_code"], summary["error"], summary["halted"]) == (1, None, None)
    for summary in summaries.values():
        assert summary["records"] == {
            "total": 5, "succeeded": 3, "failed": 1, "cancelled": 0, "invalid": 1, "resumed": 0
        }  # fmt: skip
        assert counts_of(summary["steps"]) == counts_of(summaries["thread"]["steps"])
        # Timings from every executor's workers: a few records, each timed.
        for figures in summary["steps"].values():
            job = figures["time"]["job"]
            assert job["calls"] == job["timed"] == figures["ran"]
            assert 0 <= job["p50"] <= job["p95"] <= job["max"] <= job["total"]
            assert job["max"] > 0
    assert counts_of(summaries["thread"]["steps"]) == {
        "create": {"ran": 3, "skipped": 1, "failed": 1, "cancelled": 0, "would_run": 0}
        | {"retries": 0, "precheck_errors": {}},
        "notify": {"ran": 3, "skipped": 0, "failed": 0, "cancelled": 0, "would_run": 0}
        | {"retries": 0, "precheck_errors": {}},
    }


def test_a_run_with_a_limit_has_its_figures_and_stdin_as_its_input(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    pipeline = write_pipeline(
        PIPELINE.replace("    job: steps:create\n", "    job: steps:create\n    limit: api\n", 1)
        + "limits:\n  api: {rate: 1000/s, burst: 2}\n",
        STEPS,
    )
    run = run_choreo(["run", "pipeline.yaml", "-q", "--summary-json", "s.json"], input=INPUT)
    assert run.code == 1, run.stderr
    summary = read_summary(tmp_path / "s.json")
    _check_run_fields(summary, pipeline, input="-")
    assert list(summary["limits"]) == ["api"]
    assert summary["limits"]["api"]["share"] == "1000/s"
    assert summary["limits"]["api"]["workers"] == 1


def test_exit_2_writes_the_run_fields_and_the_error(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    pipeline = write_pipeline(PIPELINE.replace("job: steps:create\n", "jbo: steps:create\n", 1))
    (tmp_path / "s.json").write_text('{"stale": true}\n')
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--summary-json", "s.json"])
    assert run.code == 2
    summary = read_summary(tmp_path / "s.json")
    _check_run_fields(summary, pipeline, input="in.jsonl")
    assert summary["exit_code"] == 2
    assert "unknown key 'jbo'" in summary["error"]
    assert summary["records"]["total"] == 0
    # A pipeline file that cannot be read has no sha256.
    run = run_choreo(["run", "missing.yaml", "--summary-json", "s.json"])
    assert run.code == 2
    summary = read_summary(tmp_path / "s.json")
    assert (summary["pipeline"], summary["pipeline_sha256"], summary["input"]) == (
        "missing.yaml",
        None,
        "-",
    )
    assert summary["error"] == "pipeline file missing.yaml does not exist"


def test_a_halted_run_says_why_in_the_summary(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    pipeline = write_pipeline(PIPELINE, STEPS)
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": i, "fail": i >= 2}) + "\n" for i in range(20))
    )
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "-q", "-w", "1", "--summary-json", "s.json"]
    run = run_choreo([*args, "--max-consecutive-failures", "2"])
    assert run.code == 3, run.stderr
    summary = read_summary(tmp_path / "s.json")
    _check_run_fields(summary, pipeline, input="in.jsonl")
    assert summary["exit_code"] == 3
    assert summary["halted"] == {
        "reason": "2 consecutive records failed (last: ValueError at line 4)",
        "line": 4,
    }
    assert summary["records"]["total"] == 4


def counts_of(steps: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each step's counts, without its timings (which differ from run to run)."""
    return {
        name: {k: v for k, v in figures.items() if k != "time"} for name, figures in steps.items()
    }
