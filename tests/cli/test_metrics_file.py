"""`choreo run --metrics-file`: Prometheus text for node_exporter's textfile collector, its
values those of the summary, replaced atomically on every exit and during the run."""

from __future__ import annotations

import datetime
import json
import math
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.test_summary_json import read_summary

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py
StartChoreo = Callable[..., Any]

STEPS = """\
from choreo_cli import Cancel, Skip

_tried = set()


def exists(ctx, record):
    if record.get("exists"):
        raise Skip("exists")
    if record.get("broken"):
        raise KeyError("no such key")


def create(ctx, record):
    if record.get("flaky") and record["id"] not in _tried:
        _tried.add(record["id"])
        raise ConnectionError("try again")
    if record.get("fail"):
        raise ValueError("bad")
    if record.get("cancel"):
        raise Cancel("not today")


def notify(ctx, record):
    return None
"""

PIPELINE = """\
version: 1
name: statements
steps:
  - name: create
    precheck: steps:exists
    job: steps:create
    retry: {attempts: 2, on: [ConnectionError]}
    limit: api
  - name: notify
    job: steps:notify
limits:
  api: {rate: 1000/s, burst: 1}
"""

LINES = [
    {"id": 1},
    {"id": 2, "exists": True},
    {"id": 3, "fail": True},
    {"id": 4, "broken": True},
    {"id": 5, "flaky": True},
    {"id": 6, "cancel": True},
    {"id": 7},
]
INPUT = "".join(json.dumps(line) + "\n" for line in LINES) + "not json\n"


def read_metrics(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the metrics file by name, then by labels; the file must parse with
    prometheus_client's parser and have no sample twice."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for sample in family.samples:
            by_labels = samples.setdefault(sample.name, {})
            key = tuple(sorted(sample.labels.items()))
            assert key not in by_labels, f"{sample.name}{dict(key)} twice"
            by_labels[key] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return float(samples[name][tuple(sorted(labels.items()))])


def epoch(text: str) -> float:
    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def check_against_summary(samples: dict[str, Any], summary: dict[str, Any], pipeline: str) -> None:
    """Every value of the metrics file is the summary's (exit code and end included)."""
    p = {"pipeline": pipeline}
    for status in ("succeeded", "failed", "cancelled", "invalid", "resumed"):
        assert (
            value(samples, "choreo_records_total", status=status, **p)
            == (summary["records"][status])
        )
    for step, counts in summary["steps"].items():
        job = {
            outcome: value(
                samples, "choreo_step_calls_total", step=step, phase="job", outcome=outcome, **p
            )
            for outcome in ("succeeded", "failed", "cancelled")
        }
        # Every job call of a record is one of the three.
        assert sum(job.values()) == counts["ran"]
        assert value(samples, "choreo_retries_total", step=step, **p) == counts.get("retries", 0)
        for phase in ("precheck", "job"):
            timing = counts["time"][phase]
            labels = {"step": step, "phase": phase, **p}
            key = tuple(sorted(labels.items()))
            if timing is None:
                assert key not in samples.get("choreo_step_duration_seconds_count", {})
                continue
            assert value(samples, "choreo_step_duration_seconds_count", **labels) == timing["calls"]
            assert math.isclose(
                value(samples, "choreo_step_duration_seconds_sum", **labels),
                timing["total"],
                abs_tol=2e-6,
            )
            buckets = sorted(
                (float(dict(k)["le"]), v)
                for k, v in samples["choreo_step_duration_seconds_bucket"].items()
                if all(dict(k).get(n) == v2 for n, v2 in labels.items())
            )
            assert buckets[-1] == (math.inf, timing["calls"])
            counts_only = [count for _, count in buckets]
            assert counts_only == sorted(counts_only)  # cumulative
            # The longest call is within the first bound at or above it.
            first_all = next(bound for bound, count in buckets if count == timing["calls"])
            assert timing["max"] <= first_all + 1e-6
            if phase == "precheck":
                precheck = {
                    outcome: value(
                        samples,
                        "choreo_step_calls_total",
                        step=step,
                        phase="precheck",
                        outcome=outcome,
                        **p,
                    )
                    for outcome in ("passed", "skipped", "error", "cancelled")
                }
                assert sum(precheck.values()) == timing["calls"]
    for limit, figure in summary["limits"].items():
        waited = value(samples, "choreo_limit_wait_seconds_total", limit=limit, **p)
        assert math.isclose(waited, figure["wait_seconds"], abs_tol=2e-6)
    assert math.isclose(
        value(samples, "choreo_run_duration_seconds", **p), summary["wall_time"], abs_tol=2e-6
    )
    assert math.isclose(
        value(samples, "choreo_run_start_timestamp_seconds", **p),
        epoch(summary["started_at"]),
        abs_tol=2e-6,
    )
    assert value(samples, "choreo_run_exit_code", **p) == summary["exit_code"]


@pytest.mark.parametrize(("executor", "timeout"), [("thread", 30), ("process", 30), ("dask", 90)])
def test_the_metrics_are_the_summary_under_every_executor(
    run_choreo: RunChoreo,
    write_pipeline: WritePipeline,
    tmp_path: Path,
    executor: str,
    timeout: float,
) -> None:
    write_pipeline(PIPELINE, STEPS)
    (tmp_path / "in.jsonl").write_text(INPUT)
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "-q", "--executor", executor, "-w", "2"]
    run = run_choreo(
        [*args, "--metrics-file", "m.prom", "--summary-json", "s.json"], timeout=timeout
    )
    assert run.code == 1, run.stderr
    summary = read_summary(tmp_path / "s.json")
    samples = read_metrics(tmp_path / "m.prom")
    check_against_summary(samples, summary, "statements")
    p = {"pipeline": "statements"}

    def job(outcome: str, step: str = "create") -> float:
        return value(
            samples, "choreo_step_calls_total", step=step, phase="job", outcome=outcome, **p
        )

    def precheck(outcome: str) -> float:
        return value(
            samples,
            "choreo_step_calls_total",
            step="create",
            phase="precheck",
            outcome=outcome,
            **p,
        )

    # Records 1, 5 (after a retry) and 7 ran create; 3 failed; 6 cancelled; 2 and 4 skipped it.
    assert (job("succeeded"), job("failed"), job("cancelled")) == (3, 1, 1)
    assert (job("succeeded", "notify"), job("failed", "notify")) == (5, 0)
    create = summary["steps"]["create"]
    if "precheck_errors" in create:  # the KeyError of record 4 is an error, not a Skip
        assert (precheck("skipped"), precheck("error"), precheck("cancelled")) == (1, 1, 0)
    if create["time"]["precheck"] is not None:
        assert precheck("passed") == 5
    if "retries" in create:
        assert value(samples, "choreo_retries_total", step="create", **p) == 1
    assert list(summary["limits"]) == ["api"]
    # Not after a run that did not exit 0, nor from a previous file (there was none).
    assert "choreo_run_last_success_timestamp_seconds" not in samples
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_the_last_success_is_carried_over_runs_that_did_not_exit_0(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(PIPELINE, STEPS)
    (tmp_path / "ok.jsonl").write_text('{"id": 1}\n')
    (tmp_path / "bad.jsonl").write_text('{"id": 3, "fail": true}\n')
    metrics = ["--metrics-file", "m.prom", "--summary-json", "s.json", "-q"]
    run = run_choreo(["run", "pipeline.yaml", "-i", "ok.jsonl", *metrics])
    assert run.code == 0, run.stderr
    summary = read_summary(tmp_path / "s.json")
    samples = read_metrics(tmp_path / "m.prom")
    check_against_summary(samples, summary, "statements")
    last = value(samples, "choreo_run_last_success_timestamp_seconds", pipeline="statements")
    assert math.isclose(last, epoch(summary["ended_at"]), abs_tol=2e-6)

    run = run_choreo(["run", "pipeline.yaml", "-i", "bad.jsonl", *metrics])
    assert run.code == 1, run.stderr
    samples = read_metrics(tmp_path / "m.prom")
    check_against_summary(samples, read_summary(tmp_path / "s.json"), "statements")
    assert (
        value(samples, "choreo_run_last_success_timestamp_seconds", pipeline="statements") == last
    )

    # Exit 2 (the input is missing): written too, with the same label and last success.
    run = run_choreo(["run", "pipeline.yaml", "-i", "missing.jsonl", *metrics])
    assert run.code == 2, run.stderr
    samples = read_metrics(tmp_path / "m.prom")
    summary = read_summary(tmp_path / "s.json")
    assert value(samples, "choreo_run_exit_code", pipeline="statements") == 2
    assert value(samples, "choreo_records_total", pipeline="statements", status="succeeded") == 0
    assert (
        value(samples, "choreo_run_last_success_timestamp_seconds", pipeline="statements") == last
    )

    # A pipeline file that does not load: the label is the one the previous file had.
    (tmp_path / "pipeline.yaml").write_text(PIPELINE.replace("job:", "jbo:", 1))
    run = run_choreo(["run", "pipeline.yaml", "-i", "ok.jsonl", *metrics])
    assert run.code == 2
    samples = read_metrics(tmp_path / "m.prom")
    assert value(samples, "choreo_run_exit_code", pipeline="statements") == 2
    assert (
        value(samples, "choreo_run_last_success_timestamp_seconds", pipeline="statements") == last
    )


def test_exit_2_without_an_earlier_file_labels_the_pipeline_by_its_file_name(
    run_choreo: RunChoreo, tmp_path: Path
) -> None:
    run = run_choreo(["run", "load.yaml", "--metrics-file", "m.prom", "--summary-json", "s.json"])
    assert run.code == 2
    summary = read_summary(tmp_path / "s.json")
    samples = read_metrics(tmp_path / "m.prom")
    assert summary["error"] == "pipeline file load.yaml does not exist"
    assert value(samples, "choreo_run_exit_code", pipeline="load") == 2
    assert value(samples, "choreo_run_duration_seconds", pipeline="load") == summary["wall_time"]
    assert "choreo_run_last_success_timestamp_seconds" not in samples


def test_the_file_is_replaced_not_appended_and_no_temporary_file_is_left(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(PIPELINE.replace("name: statements", "name: load"), STEPS)
    (tmp_path / "in.jsonl").write_text('{"id": 1}\n')
    out = tmp_path / "metrics"
    out.mkdir()
    old = out / "load.prom"
    old.write_text("# an earlier file\nstale_metric 1\n" * 200)
    old.chmod(0o640)
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--metrics-file", old, "-q"])
    assert run.code == 0, run.stderr
    assert os.listdir(out) == ["load.prom"]
    text = old.read_text()
    assert "stale_metric" not in text
    assert stat.S_IMODE(old.stat().st_mode) == 0o640  # the mode of the file replaced
    samples = read_metrics(old)
    assert value(samples, "choreo_run_exit_code", pipeline="load") == 0
    # A new file is an ordinary one.
    new = out / "new.prom"
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--metrics-file", new, "-q"])
    assert run.code == 0, run.stderr
    assert sorted(os.listdir(out)) == ["load.prom", "new.prom"]
    assert stat.S_IMODE(new.stat().st_mode) == 0o644


def _wait_for(path: Path, check: Callable[[dict[str, Any]], bool], *, timeout: float = 30) -> Any:
    """The samples of ``path`` once ``check`` holds for them (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            samples = read_metrics(path)
            if check(samples):
                return samples
        time.sleep(0.05)
    raise AssertionError(f"{path} never had the expected samples")


def test_the_file_is_written_during_the_run_and_on_sigterm(
    start_choreo: StartChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(PIPELINE, STEPS)
    process = start_choreo(
        ["run", "pipeline.yaml", "--metrics-file", "m.prom", "--summary-json", "s.json", "-q"],
        stdin=subprocess.PIPE,
        env={"CHOREO_METRICS_INTERVAL": "0.1"},
    )
    assert process.stdin is not None
    process.stdin.write(b'{"id": 1}\n{"id": 3, "fail": true}\n')
    process.stdin.flush()

    def two_records(samples: dict[str, Any]) -> bool:
        records = samples.get("choreo_records_total", {})
        return sum(records.values()) == 2

    samples = _wait_for(tmp_path / "m.prom", two_records)
    # During the run: no exit code yet.
    assert "choreo_run_exit_code" not in samples
    assert value(samples, "choreo_records_total", pipeline="statements", status="failed") == 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    samples = read_metrics(tmp_path / "m.prom")
    summary = read_summary(tmp_path / "s.json")
    assert summary["interrupted"] == "SIGTERM"
    check_against_summary(samples, summary, "statements")
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_a_halted_run_writes_its_exit_code(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(PIPELINE, STEPS)
    (tmp_path / "in.jsonl").write_text(INPUT)
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "-q", "--fail-fast"]
    run = run_choreo([*args, "--metrics-file", "m.prom", "--summary-json", "s.json"])
    assert run.code == 3, run.stderr
    summary = read_summary(tmp_path / "s.json")
    check_against_summary(read_metrics(tmp_path / "m.prom"), summary, "statements")
