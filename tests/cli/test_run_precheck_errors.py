"""`choreo run` with a precheck that raises something other than Skip or Cancel: the
warnings that end stderr, ``--precheck-errors`` and ``precheck_errors:``, and the summary."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import CHOREO, RunChoreo, WritePipeline, choreo_env

STEPS = """
from choreo_cli import Skip


def check(ctx, record):
    if record.get("skip"):
        raise Skip("on purpose")
    if record.get("bug"):
        return record["missing"]
    if record.get("type_bug"):
        return record["id"] + "x"
    return None


def job(ctx, record):
    return record["id"]
"""

PIPELINE = """
version: 1
{setting}steps:
  - name: invite
    precheck: steps:check
    job: steps:job
"""

INPUT = (
    '{"id": 1}\n'
    '{"id": 2, "skip": true}\n'
    '{"id": 3, "type_bug": true}\n'
    '{"id": 4, "bug": true}\n'
    '{"id": 5}\n'
    '{"id": 6, "bug": true}\n'
    '{"id": 7, "bug": true}\n'
)

WARNINGS = [
    "step 'invite': precheck raised TypeError on 1 record, first at line 3 "
    "(treated as a skip; raise Skip to skip on purpose)",
    "step 'invite': precheck raised KeyError on 3 records, first at line 4 "
    "(treated as a skip; raise Skip to skip on purpose)",
]

EXECUTORS = {
    "thread-1": ["--executor", "thread", "-w", "1"],
    "thread-4": ["-w", "4"],
    "process": ["--executor", "process", "-w", "2"],
    "dask": ["--executor", "dask", "-w", "2"],
}


def write(write_pipeline: WritePipeline, setting: str = "") -> Path:
    return write_pipeline(PIPELINE.format(setting=setting), STEPS)


def plain(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``choreo ARGS`` whose stdout is not result lines (validate, show, test)."""
    return subprocess.run(
        [str(CHOREO), *args], capture_output=True, text=True, env=choreo_env(), cwd=cwd, timeout=60
    )


@pytest.mark.parametrize("quiet", [False, True])
def test_stderr_ends_with_one_warning_per_step_and_type(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, quiet: bool
) -> None:
    write(write_pipeline)
    run = run_choreo(["run", "pipeline.yaml", *(["-q"] if quiet else [])], input=INPUT)
    assert run.code == 0, run.stderr
    assert run.statuses == ["succeeded"] * 7
    assert run.lines[3]["steps"] == {"invite": "skipped"}
    assert run.stderr.splitlines()[-2:] == WARNINGS
    if not quiet:
        # The summary table names them too, before the warnings.
        table = run.stderr.splitlines()[:-2]
        assert any("  4: TypeError 1, KeyError 3" in line for line in table)


def test_no_warning_when_every_precheck_skips_with_skip(
    run_choreo: RunChoreo, write_pipeline: WritePipeline
) -> None:
    write(write_pipeline)
    run = run_choreo(["run", "pipeline.yaml"], input='{"id": 1}\n{"id": 2, "skip": true}\n')
    assert run.code == 0
    assert "precheck raised" not in run.stderr
    assert "precheck errors" not in run.stderr


@pytest.mark.parametrize("executor", list(EXECUTORS))
def test_precheck_errors_fail_fails_the_records(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path, executor: str
) -> None:
    write(write_pipeline)
    run = run_choreo(
        [
            "run",
            "pipeline.yaml",
            "--precheck-errors",
            "fail",
            "--summary-json",
            "summary.json",
            *EXECUTORS[executor],
        ],
        input=INPUT,
        timeout=120,
    )
    assert run.code == 1, run.stderr
    assert run.statuses == [
        "succeeded",
        "succeeded",
        "failed",
        "failed",
        "succeeded",
        "failed",
        "failed",
    ]
    assert run.lines[3]["error"] == {
        "step": "invite",
        "phase": "precheck",
        "type": "KeyError",
        "message": "'missing'",
    }
    assert run.lines[3]["steps"] == {"invite": "failed"}
    assert run.lines[1]["steps"] == {"invite": "skipped"}  # Skip keeps its meaning
    assert "treated as a skip" not in run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    invite = summary["steps"]["invite"]
    assert invite["precheck_errors"] == {
        "TypeError": {"count": 1, "first_line": 3},
        "KeyError": {"count": 3, "first_line": 4},
    }
    assert (invite["ran"], invite["skipped"], invite["failed"]) == (2, 1, 4)
    assert summary["errors"] == [
        {"step": "invite", "phase": "precheck", "type": "KeyError", "count": 3, "first_line": 4},
        {"step": "invite", "phase": "precheck", "type": "TypeError", "count": 1, "first_line": 3},
    ]


@pytest.mark.parametrize("executor", ["thread-1", "process"])
def test_the_file_says_fail_and_the_option_overrides_it(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, executor: str
) -> None:
    write(write_pipeline, "precheck_errors: fail\n")
    run = run_choreo(["run", "pipeline.yaml", *EXECUTORS[executor]], input=INPUT, timeout=60)
    assert run.code == 1, run.stderr
    assert run.statuses.count("failed") == 4
    run = run_choreo(
        ["run", "pipeline.yaml", "--precheck-errors", "skip", *EXECUTORS[executor]],
        input=INPUT,
        timeout=60,
    )
    assert run.code == 0, run.stderr
    assert run.stderr.splitlines()[-2:] == WARNINGS


@pytest.mark.parametrize("executor", ["thread-1", "process"])
def test_the_summary_counts_retries_of_records_that_succeeded(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path, executor: str
) -> None:
    write_pipeline(
        """
        version: 1
        steps:
          - name: push
            job: steps:push
            retry: {attempts: 3, delay: 0}
        """,
        """
        import os

        def push(ctx, record):
            # Fails the first attempt of each odd record (a file per record: any process).
            mark = os.path.join(os.path.dirname(__file__), f"tried-{record}")
            if record % 2 and not os.path.exists(mark):
                open(mark, "w").close()
                raise ConnectionError("try again")
            return record
        """,
    )
    run = run_choreo(
        ["run", "pipeline.yaml", "--summary-json", "summary.json", *EXECUTORS[executor]],
        input="1\n2\n3\n4\n5\n",
        timeout=60,
    )
    assert run.code == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"]["push"]["retries"] == 3
    assert summary["errors"] == []
    header = next(line for line in run.stderr.splitlines() if line.startswith("step "))
    assert "retries" in header.split()


def test_validate_names_a_bad_value_where_it_is(
    write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write(write_pipeline, "precheck_errors: fial\n")
    done = plain(["validate", "pipeline.yaml"], tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (
        "pipeline.yaml:3:18: 'precheck_errors' must be one of 'skip', 'fail', not 'fial' "
        "— did you mean 'fail'?"
    )
    write(write_pipeline, "precheck_errors: fail\n")
    assert plain(["validate", "pipeline.yaml"], tmp_path).returncode == 0


def test_show_says_when_prechecks_fail_records(
    write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write(write_pipeline, "precheck_errors: fail\n")
    done = plain(["show", "pipeline.yaml"], tmp_path)
    assert done.returncode == 0
    assert "precheck_errors: fail" in done.stdout.splitlines()[-1]
    done = plain(["show", "pipeline.yaml", "--format", "json"], tmp_path)
    assert json.loads(done.stdout)["precheck_errors"] == "fail"
    write(write_pipeline)
    assert "precheck_errors" not in plain(["show", "pipeline.yaml"], tmp_path).stdout


def test_choreo_test_honours_the_file(write_pipeline: WritePipeline, tmp_path: Path) -> None:
    write(write_pipeline, "precheck_errors: fail\n")
    (tmp_path / "pipeline.test.yaml").write_text(
        "version: 1\n"
        "pipeline: pipeline.yaml\n"
        "tests:\n"
        "  - name: a bug in the precheck fails the record\n"
        "    input: [{id: 1, bug: true}]\n"
        "    expect:\n"
        "      - status: failed\n"
        "        steps: {invite: failed}\n"
        "    exit_code: 1\n",
        encoding="utf-8",
    )
    done = plain(["test", "pipeline.test.yaml"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    write(write_pipeline)  # skip: the record succeeds, and the test fails
    assert plain(["test", "pipeline.test.yaml"], tmp_path).returncode == 1


@pytest.mark.parametrize("executor", ["thread-1", "process"])
def test_a_skip_subclass_is_no_precheck_error(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, executor: str
) -> None:
    write_pipeline(
        PIPELINE.format(setting="precheck_errors: fail\n"),
        """
        from choreo_cli import Skip

        class Exists(Skip):
            pass

        def check(ctx, record):
            raise Exists("there")

        def job(ctx, record):
            return 1
        """,
    )
    run = run_choreo(["run", "pipeline.yaml", *EXECUTORS[executor]], input="1\n2\n", timeout=60)
    assert run.code == 0, run.stderr
    assert run.statuses == ["succeeded", "succeeded"]
    assert "precheck raised" not in run.stderr
    assert "precheck errors" not in run.stderr
