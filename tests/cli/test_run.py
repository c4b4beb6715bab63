"""`choreo run` as a user runs it: statuses, result fields, exit codes 0/1/2, the options."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import untimed

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py

PIPELINE = """\
version: 1
name: statuses
steps:
  - name: check
    precheck: steps:check
    job: steps:first
  - name: second
    job: steps:second
"""

STEPS = """\
from choreo_cli import Cancel, Skip


def check(ctx, record: dict):
    if record.get("skip"):
        raise Skip("already there", data={"found": record["skip"]})
    if record.get("cancel_in_precheck"):
        raise Cancel("stop in precheck")
    return "checked"


def first(ctx, record):
    if record.get("fail"):
        raise ValueError("bad amount")
    if record.get("cancel"):
        raise Cancel("not today")
    return record.get("id")


def second(ctx, record):
    return "done"
"""


def _jsonl(*records: Any) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


@pytest.fixture
def statuses(write_pipeline: WritePipeline) -> Path:
    return write_pipeline(PIPELINE, STEPS)


def _error(step: str | None, phase: str | None, type_: str, message: str) -> dict[str, Any]:
    return {"step": step, "phase": phase, "type": type_, "message": message}


# -- statuses and their fields ------------------------------------------------------------


def test_succeeded_record_and_exit_0(statuses: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl({"id": 1}, {"id": 2}))
    assert run.code == 0
    assert run.lines == [
        {
            "index": 0,
            "line": 1,
            "status": "succeeded",
            "error": None,
            "errors": [],
            "steps": {"check": "succeeded", "second": "succeeded"},
        },
        {
            "index": 1,
            "line": 2,
            "status": "succeeded",
            "error": None,
            "errors": [],
            "steps": {"check": "succeeded", "second": "succeeded"},
        },
    ]


def test_skipped_precheck_still_succeeds(statuses: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl({"skip": 7}))
    assert run.code == 0
    assert run.lines == [
        {
            "index": 0,
            "line": 1,
            "status": "succeeded",
            "error": None,
            "errors": [_error("check", "precheck", "Skip", "already there")],
            "steps": {"check": "skipped", "second": "succeeded"},
        }
    ]


def test_failed_record_and_exit_1(statuses: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl({"fail": True}, {"id": 2}))
    assert run.code == 1
    failure = _error("check", "job", "ValueError", "bad amount")
    assert run.lines[0] == {
        "index": 0,
        "line": 1,
        "status": "failed",
        "error": failure,
        "errors": [failure],
        "steps": {"check": "failed", "second": "not_run"},
    }
    assert run.lines[1]["status"] == "succeeded"


@pytest.mark.parametrize(
    ("record", "phase", "message", "outcome"),
    [
        ({"cancel": True}, "job", "not today", "cancelled"),
        ({"cancel_in_precheck": True}, "precheck", "stop in precheck", "cancelled"),
    ],
)
def test_cancelled_record_and_exit_1(
    statuses: Path,
    run_choreo: RunChoreo,
    record: dict[str, Any],
    phase: str,
    message: str,
    outcome: str,
) -> None:
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl(record))
    assert run.code == 1
    cancel = _error("check", phase, "Cancel", message)
    assert run.lines == [
        {
            "index": 0,
            "line": 1,
            "status": "cancelled",
            "error": cancel,
            "errors": [cancel],
            "steps": {"check": outcome, "second": "not_run"},
        }
    ]


def test_invalid_json_line_names_its_line_and_the_run_goes_on(
    statuses: Path, run_choreo: RunChoreo
) -> None:
    run = run_choreo(["run", "pipeline.yaml"], input=b'{"id": 1}\n\n{"id": \n{"id": 3}\n')
    assert run.code == 1
    assert run.statuses == ["succeeded", "invalid", "succeeded"]
    invalid = run.lines[1]
    assert (invalid["index"], invalid["line"]) == (1, 3)
    assert invalid["error"]["step"] is None
    assert invalid["error"]["phase"] == "input"
    assert invalid["error"]["type"] == "JSONDecodeError"
    assert invalid["error"]["message"]
    assert invalid["errors"] == [invalid["error"]]
    assert invalid["steps"] == {"check": "not_run", "second": "not_run"}


def test_invalid_utf8_line(statuses: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml"], input=b'"caf\xe9"\n{"id": 2}\n')
    assert run.code == 1
    assert run.statuses == ["invalid", "succeeded"]
    error = run.lines[0]["error"]
    assert error["type"] == "UnicodeDecodeError"
    assert (error["step"], error["phase"]) == (None, "input")
    assert "0xe9" in error["message"]
    assert run.lines[0]["errors"] == [error]
    assert run.lines[0]["steps"] == {"check": "not_run", "second": "not_run"}


def test_record_that_does_not_fit_the_declared_type_is_invalid(
    statuses: Path, run_choreo: RunChoreo
) -> None:
    run = run_choreo(["run", "pipeline.yaml"], input=b'[1, 2]\n"text"\n{"id": 3}\n')
    assert run.code == 1
    assert run.statuses == ["invalid", "invalid", "succeeded"]
    for result in run.lines[:2]:
        error = result["error"]
        assert (error["step"], error["phase"], error["type"]) == (
            "check",
            "precheck",
            "UnassignableInput",
        )
        # It names the step, the callable and both types.
        assert "check" in error["message"] and "steps:check" in error["message"]
        assert "dict" in error["message"]
        assert result["errors"] == [error]
        assert result["steps"] == {"check": "not_run", "second": "not_run"}
    assert "array" in run.lines[0]["error"]["message"]
    assert "string" in run.lines[1]["error"]["message"]


def test_json_null_record_is_passed_as_none(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(
        """\
        version: 1
        steps:
          - name: only
            job: steps:job
        """,
        """\
        def job(ctx, record: dict):
            return repr(record)
        """,
    )
    run = run_choreo(["run", "pipeline.yaml", "--include-data"], input=b"null\n")
    assert run.code == 0
    assert run.lines[0]["data"] == {"precheck": {}, "job": {"only": "None"}}


# -- exit code 2: unusable before any record ran -------------------------------------------


def test_unknown_option_exits_2(statuses: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml", "--no-such-option"], input=_jsonl({"id": 1}))
    assert (run.code, run.stdout) == (2, b"")
    assert run.stderr == (
        "error: choreo run has no option --no-such-option — see choreo run --help\n"
    )


def test_missing_pipeline_file_exits_2(run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "nowhere.yaml"], input=_jsonl({"id": 1}))
    assert (run.code, run.stdout) == (2, b"")
    assert run.stderr == "error: pipeline file nowhere.yaml does not exist\n"


def test_broken_pipeline_file_exits_2_with_positioned_message(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(
        """\
        version: 1
        steps:
          - name: one
            job: steps:job
            retrys: 3
        """,
        "def job(ctx):\n    return 1\n",
    )
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl({"id": 1}))
    assert (run.code, run.stdout) == (2, b"")
    assert run.stderr.startswith("pipeline.yaml:5:5: ")
    assert "unknown key 'retrys'" in run.stderr and "did you mean 'retry'?" in run.stderr


def test_broken_pipeline_file_writes_no_output_file(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    write_pipeline("version: 1\nsteps:\n  - name: one\n    job: steps:missing\n", "X = 1\n")
    run = run_choreo(["run", "pipeline.yaml", "-o", "out.jsonl"], input=_jsonl({"id": 1}))
    assert (run.code, run.stdout) == (2, b"")
    assert run.stderr.startswith("pipeline.yaml:4:10: ")
    assert "missing" in run.stderr
    out = tmp_path / "out.jsonl"
    assert not out.exists() or out.read_bytes() == b""


def test_yaml_syntax_error_is_positioned(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline("version: 1\nsteps: [\n")
    run = run_choreo(["run", "pipeline.yaml"], input=b"")
    assert (run.code, run.stdout) == (2, b"")
    first = run.stderr.splitlines()[0]
    assert first.startswith("pipeline.yaml:"), first
    assert first.split(":")[1].isdigit() and first.split(":")[2].isdigit(), first


def test_missing_input_file_exits_2(statuses: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml", "--input", "absent.jsonl"])
    assert (run.code, run.stdout) == (2, b"")
    assert run.stderr == "error: cannot read input absent.jsonl: No such file or directory\n"


def test_failing_resource_factory_exits_2_naming_the_resource(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    write_pipeline(
        """\
        version: 1
        resources:
          warehouse:
            factory: steps:connect
        steps:
          - name: one
            job: steps:job
        """,
        """\
        from pathlib import Path


        def connect():
            raise ConnectionError("database is down")


        def job(ctx):
            Path("job-ran").touch()
        """,
    )
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl({"id": 1}))
    assert (run.code, run.stdout) == (2, b"")
    assert "warehouse" in run.stderr
    assert "database is down" in run.stderr
    assert run.stderr.startswith("error: ")
    assert not (tmp_path / "job-ran").exists()


def test_set_without_equals_exits_2(statuses: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml", "--set", "currency"], input=_jsonl({"id": 1}))
    assert (run.code, run.stdout) == (2, b"")
    assert run.stderr.startswith("error: ")
    assert "currency" in run.stderr and "KEY=VALUE" in run.stderr


def test_unset_variable_without_default_exits_2(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(
        """\
        version: 1
        context:
          dsn: ${CHOREO_T_UNSET}
        steps:
          - name: one
            job: steps:job
        """,
        "def job(ctx):\n    return 1\n",
    )
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl({"id": 1}))
    assert (run.code, run.stdout) == (2, b"")
    assert "CHOREO_T_UNSET" in run.stderr


# -- teardown -----------------------------------------------------------------------------


def test_failing_teardown_exits_1_with_a_message(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(
        """\
        version: 1
        resources:
          db:
            factory: steps:connect
        steps:
          - name: one
            job: steps:job
        """,
        """\
        def connect():
            yield "connection"
            raise OSError("commit failed on close")


        def job(ctx):
            return ctx.resources.db
        """,
    )
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl({"id": 1}, {"id": 2}))
    assert run.code == 1
    assert run.statuses == ["succeeded", "succeeded"]
    assert "commit failed on close" in run.stderr
    assert "results may not be durable" in run.stderr
    assert "db" in run.stderr


# -- --set, ${VAR}, --include-* -----------------------------------------------------------

VALUES_PIPELINE = """\
version: 1
context:
  currency: EUR
  dsn: ${CHOREO_T_DSN:-statements.db}
  limit: ${CHOREO_T_LIMIT}
steps:
  - name: values
    job: steps:values
"""

VALUES_STEPS = """\
def values(ctx, record):
    return {key: ctx.values[key] for key in sorted(ctx.values)}
"""


def test_set_and_environment_reach_ctx_values(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(VALUES_PIPELINE, VALUES_STEPS)
    run = run_choreo(
        [
            "run",
            "pipeline.yaml",
            "--include-data",
            "--set",
            "currency=USD",
            "--set",
            "batch=3",
            "--set",
            "strict=true",
            "--set",
            "label=3 apples",
        ],
        input=_jsonl({"id": 1}),
        env={"CHOREO_T_LIMIT": "10"},
    )
    assert run.code == 0
    assert run.lines[0]["data"] == {
        "precheck": {},
        "job": {
            "values": {
                "batch": 3,
                "currency": "USD",
                "dsn": "statements.db",
                "label": "3 apples",
                "limit": "10",
                "strict": True,
            }
        },
    }


def test_environment_variable_overrides_the_default(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(VALUES_PIPELINE, VALUES_STEPS)
    run = run_choreo(
        ["run", "pipeline.yaml", "--include-data"],
        input=_jsonl({"id": 1}),
        env={"CHOREO_T_DSN": "/data/prod.db", "CHOREO_T_LIMIT": "5"},
    )
    assert run.code == 0
    values = run.lines[0]["data"]["job"]["values"]
    assert values == {"currency": "EUR", "dsn": "/data/prod.db", "limit": "5"}


def test_set_overrides_an_unset_variable(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(VALUES_PIPELINE, VALUES_STEPS)
    run = run_choreo(
        ["run", "pipeline.yaml", "--include-data", "--set", "limit=25"], input=_jsonl({"id": 1})
    )
    assert run.code == 0, run.stderr
    assert run.lines[0]["data"]["job"]["values"]["limit"] == 25


def test_include_input(statuses: Path, run_choreo: RunChoreo) -> None:
    records = [{"id": 1, "name": "é"}, [1, 2], "x", 3.5, None]
    run = run_choreo(["run", "pipeline.yaml", "--include-input"], input=_jsonl(*records) + b"{\n")
    assert [line["input"] for line in run.lines] == [*records, None]
    assert "data" not in run.lines[0]


def test_include_data_writes_values_that_are_not_json_with_repr(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(
        """\
        version: 1
        steps:
          - name: make
            precheck: steps:pre
            job: steps:make
          - name: nothing
            job: steps:nothing
        """,
        """\
        import datetime


        class Thing:
            def __repr__(self):
                return "Thing(42)"


        def pre(ctx, record):
            return datetime.date(2024, 5, 17)


        def make(ctx, record):
            return {"thing": Thing(), "n": 1, "list": [1, "a", None], "set": {3}}


        def nothing(ctx, record):
            return None
        """,
    )
    run = run_choreo(["run", "pipeline.yaml", "--include-data"], input=_jsonl({"id": 1}))
    assert run.code == 0
    data = run.lines[0]["data"]
    assert data["precheck"] == {"make": "datetime.date(2024, 5, 17)"}
    # A None return is not stored.
    assert data["job"] == {
        "make": {"thing": "Thing(42)", "n": 1, "list": [1, "a", None], "set": "{3}"}
    }


# -- --fail-fast, ordering --------------------------------------------------------------


def test_fail_fast_with_one_worker_starts_no_record_after_the_first_failure(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    write_pipeline(
        """\
        version: 1
        steps:
          - name: one
            job: steps:job
        """,
        """\
        from pathlib import Path


        def job(ctx, record):
            Path(f"ran-{record['id']}").touch()
            if record.get("fail"):
                raise RuntimeError("first failure")
        """,
    )
    records = [{"id": 0}, {"id": 1}, {"id": 2, "fail": True}, *({"id": i} for i in range(3, 50))]
    run = run_choreo(["run", "pipeline.yaml", "--fail-fast", "-w", "1"], input=_jsonl(*records))
    assert run.code == 3  # stopped early: some input was not run
    assert "halted: --fail-fast: the record at line 3 failed (RuntimeError)\n" in run.stderr
    assert run.indices == [0, 1, 2]
    assert run.statuses == ["succeeded", "succeeded", "failed"]
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-0", "ran-1", "ran-2"]


def test_fail_fast_with_workers_still_writes_one_line_per_started_record(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(
        "version: 1\nsteps:\n  - name: one\n    job: steps:job\n",
        """\
        def job(ctx, record):
            if record == 5:
                raise RuntimeError("five")
        """,
    )
    run = run_choreo(["run", "pipeline.yaml", "--fail-fast", "-w", "4"], input=_jsonl(*range(1000)))
    assert run.code == 3
    assert run.indices == list(range(len(run.lines)))
    assert len(run.lines) < 1000
    assert "failed" in run.statuses


SLEEPY = """\
version: 1
steps:
  - name: nap
    job: steps:nap
"""

SLEEPY_STEPS = """\
import random
import time


def nap(ctx, record):
    time.sleep(random.random() * 0.02)
    return record
"""


def test_ordered_output_with_four_workers(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(SLEEPY, SLEEPY_STEPS)
    run = run_choreo(
        ["run", "pipeline.yaml", "-w", "4", "--include-input"], input=_jsonl(*range(120))
    )
    assert run.code == 0
    assert run.indices == list(range(120))
    assert [line["input"] for line in run.lines] == list(range(120))
    assert [line["line"] for line in run.lines] == list(range(1, 121))


def test_unordered_output_gives_every_index_once(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(SLEEPY, SLEEPY_STEPS)
    run = run_choreo(
        ["run", "pipeline.yaml", "-w", "4", "--unordered", "--include-input"],
        input=_jsonl(*range(120)),
    )
    assert run.code == 0
    assert sorted(run.indices) == list(range(120))
    assert all(line["input"] == line["index"] for line in run.lines)


# -- stderr: quiet, summary, --summary-json -----------------------------------------------


def test_quiet_prints_nothing_for_a_successful_run(statuses: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml", "-q"], input=_jsonl({"id": 1}, {"skip": 1}))
    assert run.code == 0
    assert run.stderr == ""
    assert len(run.lines) == 2


def test_quiet_still_prints_errors(run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "nowhere.yaml", "-q"])
    assert run.code == 2
    assert run.stderr == "error: pipeline file nowhere.yaml does not exist\n"


MIXED = _jsonl({"id": 1}, {"skip": 2}, {"fail": True}, {"cancel": True}, {"id": 5}, [6]) + b"oops\n"


def test_summary_on_stderr_has_the_counts(statuses: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml"], input=MIXED)
    assert run.code == 1
    lines = run.stderr.splitlines()
    assert lines[0] == "records: 7 (succeeded 3, failed 1, cancelled 1, invalid 2)"
    # Then the time spent in each step's calls, and its job's p50, p95 and longest call.
    assert lines[1].split() == [
        "step", "ran", "skipped", "failed", "cancelled", "time", "job", "p50", "job", "p95",
        "job", "max",
    ]  # fmt: skip
    assert lines[2].split()[:5] == ["check", "4", "1", "1", "1"]
    assert lines[3].split()[:5] == ["second", "3", "0", "0", "0"]
    for line in lines[2:4]:
        cells = re.split(r"\s{2,}", line.strip())[5:]
        assert len(cells) == 4 and all(re.fullmatch(r"[\d.]+ (µs|ms|s)", c) for c in cells), line
    assert lines[4].startswith("wall time ") and lines[4].endswith(" records/s")
    assert len(lines) == 5


def test_summary_json(statuses: Path, run_choreo: RunChoreo, tmp_path: Path) -> None:
    run = run_choreo(["run", "pipeline.yaml", "--summary-json", "summary.json", "-q"], input=MIXED)
    assert run.code == 1
    assert run.stderr == ""
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["records"] == {
        "total": 7,
        "succeeded": 3,
        "failed": 1,
        "cancelled": 1,
        "invalid": 2,
        "resumed": 0,
    }
    assert summary["steps"]["check"] == {
        "ran": 4,
        "skipped": 1,
        "failed": 1,
        "cancelled": 1,
        "would_run": 0,
        "retries": 0,
        "precheck_errors": {},
        "time": summary["steps"]["check"]["time"],
    }
    job = summary["steps"]["check"]["time"]["job"]
    assert job["calls"] == job["timed"] == 4 and job["max"] > 0
    assert summary["steps"]["second"]["ran"] == 3
    assert list(summary["steps"]) == ["check", "second"]
    assert summary["exit_code"] == 1
    assert summary["interrupted"] is None
    assert summary["broken_pipe"] is False
    assert summary["teardown_failed"] is False
    assert isinstance(summary["wall_time"], float) and summary["wall_time"] >= 0
    assert summary["records_per_second"] >= 0


def test_one_worker_writes_and_counts_exactly_what_two_workers_do(
    statuses: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    # One worker takes choreo's fused serial loop; two take the general one.
    data = MIXED * 3 + b"\n  \n" + MIXED
    runs = {}
    for workers in ("1", "2"):
        summary = tmp_path / f"summary-{workers}.json"
        rejects = tmp_path / f"rejects-{workers}.jsonl"
        args = ["run", "pipeline.yaml", "-w", workers, "--summary-json", summary, "-q"]
        run = run_choreo([*args, "--rejects", rejects], input=data)
        figures = json.loads(summary.read_text(encoding="utf-8"))
        untimed(figures)
        runs[workers] = (run.code, run.stdout, figures, rejects.read_bytes())
    assert runs["1"] == runs["2"]
    assert runs["1"][2]["records"]["total"] == 28
    assert runs["1"][3].count(b"\n") == 16


def test_a_command_line_only_typer_reads_runs_the_same(
    statuses: Path, run_choreo: RunChoreo
) -> None:
    # "-w2" (a value stuck to a short option) is not a plain command line: typer reads it.
    plain = run_choreo(["run", "pipeline.yaml", "-w", "2", "-q"], input=MIXED)
    by_typer = run_choreo(["run", "pipeline.yaml", "-w2", "-q"], input=MIXED)
    assert (by_typer.code, by_typer.stdout, by_typer.stderr) == (1, plain.stdout, "")
    assert plain.code == 1 and len(plain.lines) == 7


def test_log_messages_go_to_stderr_only(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(
        "version: 1\nsteps:\n  - name: talk\n    job: steps:talk\n",
        """\
        def talk(ctx, record):
            ctx.log.warning("careful with %s", record)
            ctx.log.info("info for %s", record)
            return record
        """,
    )
    run = run_choreo(["run", "pipeline.yaml", "--log-level", "INFO"], input=_jsonl(11, 12))
    assert run.code == 0
    assert len(run.lines) == 2  # every stdout line is a validated result line
    assert b"careful" not in run.stdout
    assert "careful with 11" in run.stderr and "careful with 12" in run.stderr
    assert "info for 11" in run.stderr
    quiet = run_choreo(["run", "pipeline.yaml"], input=_jsonl(11))
    assert "careful with 11" in quiet.stderr and "info for 11" not in quiet.stderr
    # Each line names the step (its logger) and the record it is about.
    assert "WARNING choreo.step.talk: careful with 12 (record 1, line 2)\n" in run.stderr
    bad = run_choreo(["run", "pipeline.yaml", "--log-level", "LOUD"], input=_jsonl(11))
    assert (bad.code, bad.stdout) == (2, b"")
    assert bad.stderr == (
        "error: --log-level: unknown log level 'LOUD': "
        "use DEBUG, INFO, WARNING, ERROR or CRITICAL\n"
    )


# -- --rejects ----------------------------------------------------------------------------


def test_rejects_hold_the_input_lines_of_records_that_did_not_succeed(
    statuses: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    lines = [
        b'{"id": 1}\n',
        b'{"fail": 1, "n": "crlf"}\r\n',
        b"\n",
        b'{"skip": 3}\n',
        b"not json\r\n",
        b'"caf\xe9"\n',
        b'{"cancel": true}\n',
        b'{"id": 8}\n',
        b'{"fail": 2, "n": "last"}',
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(lines))
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--rejects", "rejects.jsonl"])
    assert run.code == 1
    assert run.statuses == [
        "succeeded",
        "failed",
        "succeeded",
        "invalid",
        "invalid",
        "cancelled",
        "succeeded",
        "failed",
    ]
    rejects = (tmp_path / "rejects.jsonl").read_bytes()
    assert rejects == (
        b'{"fail": 1, "n": "crlf"}\r\n'
        b"not json\r\n"
        b'"caf\xe9"\n'
        b'{"cancel": true}\n'
        b'{"fail": 2, "n": "last"}\n'
    )
    rerun = run_choreo(["run", "pipeline.yaml", "-i", "rejects.jsonl", "--include-input"])
    assert rerun.code == 1
    assert rerun.statuses == ["failed", "invalid", "invalid", "cancelled", "failed"]
    assert [line["input"] for line in rerun.lines] == [
        {"fail": 1, "n": "crlf"},
        None,
        None,
        {"cancel": True},
        {"fail": 2, "n": "last"},
    ]


def test_rejects_are_in_input_order_when_unordered(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    write_pipeline(
        SLEEPY,
        SLEEPY_STEPS.replace(
            "    return record", "    if record % 3 == 0:\n        raise ValueError(record)"
        ),
    )
    run = run_choreo(
        ["run", "pipeline.yaml", "-w", "4", "--unordered", "--rejects", "rejects.jsonl"],
        input=_jsonl(*range(60)),
    )
    assert run.code == 1
    assert (tmp_path / "rejects.jsonl").read_bytes() == _jsonl(*range(0, 60, 3))


def test_rejects_empty_when_everything_succeeded(
    statuses: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    run = run_choreo(["run", "pipeline.yaml", "--rejects", "r.jsonl"], input=_jsonl({"id": 1}))
    assert run.code == 0
    assert (tmp_path / "r.jsonl").read_bytes() == b""


# -- --dry-run ----------------------------------------------------------------------------


def test_dry_run_calls_prechecks_but_no_job(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    write_pipeline(
        """\
        version: 1
        resources:
          marker_dir:
            factory: steps:marker_dir
        steps:
          - name: write
            precheck: steps:exists
            job: steps:write
          - name: again
            job: steps:write
        """,
        """\
        from pathlib import Path

        from choreo_cli import Skip


        def marker_dir():
            Path("resource-built").touch()
            return Path(".")


        def exists(ctx, record):
            Path(f"precheck-{record}").touch()
            if record == 2:
                raise Skip("exists")


        def write(ctx, record):
            Path(f"job-{record}").touch()
        """,
    )
    run = run_choreo(["run", "pipeline.yaml", "--dry-run"], input=_jsonl(1, 2))
    assert run.code == 0
    assert run.lines[0]["steps"] == {"write": "would_run", "again": "would_run"}
    assert run.lines[1]["steps"] == {"write": "skipped", "again": "would_run"}
    assert run.statuses == ["succeeded", "succeeded"]
    assert not list(tmp_path.glob("job-*"))
    assert (tmp_path / "resource-built").exists()
    assert sorted(p.name for p in tmp_path.glob("precheck-*")) == ["precheck-1", "precheck-2"]
    assert "would_run" in run.stderr


def test_system_exit_in_a_job_fails_the_record_and_the_run_goes_on(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(
        "version: 1\nsteps:\n  - name: one\n    job: steps:job\n",
        """\
        import sys


        def job(ctx, record):
            if record == 1:
                sys.exit(3)
            return record
        """,
    )
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl(0, 1, 2))
    assert run.code == 1
    assert run.statuses == ["succeeded", "failed", "succeeded"]
    assert run.lines[1]["error"] == _error("one", "job", "SystemExit", "3")
