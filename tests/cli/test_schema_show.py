"""`choreo schema` and `choreo show`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from choreo_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

PIPELINE = """\
version: 1
name: demo
description: Shows [brackets] as written.
context: {dsn: "${CHOREO_TEST_SECRET:-x}"}
resources:
  db: {factory: steps:connect, with: {path: "${CHOREO_TEST_SECRET}"}, scope: worker}
steps:
  - name: create [statement]
    precheck: {call: steps:exists, with: {tolerance: 0.01}}
    job: steps:create
    retry: {attempts: 3}
    timeout: 5
  - name: line
    job: {call: steps.create_line, with: {limit: 2, mode: fast}}
"""


def test_schema_prints_the_packaged_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == (ROOT / "schemas" / "pipeline.schema.json").read_text(encoding="utf-8")
    assert json.loads(result.stdout)["title"] == "choreo pipeline"


@pytest.mark.parametrize(
    ("flag", "name"), [([], "pipeline"), (["--result"], "result"), (["--summary"], "summary")]
)
def test_schema_prints_each_schema_from_the_installed_command(flag: list[str], name: str) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "choreo"), "schema", *flag],
        capture_output=True, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout == (ROOT / "schemas" / f"{name}.schema.json").read_bytes()


def test_schema_takes_one_schema_flag_at_most() -> None:
    result = runner.invoke(app, ["schema", "--result", "--summary"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: give one of --result, --summary, not more — see choreo schema --help\n"
    )


@pytest.fixture
def pipeline_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    marker = tmp_path / "imported.marker"
    (tmp_path / "steps.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHOREO_TEST_SECRET", "hunter2")
    return path


def test_show_prints_a_table_of_the_steps(pipeline_file: Path) -> None:
    result = runner.invoke(app, ["show", "pipeline.yaml"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].strip() == "demo"
    assert [c.strip() for c in lines[2].strip("┃").split("┃")] == [
        "step",
        "precheck",
        "job",
        "with",
    ]
    row = [c.strip() for c in lines[4].strip("│").split("│")]
    assert row == ["create [statement]", "steps:exists", "steps:create", "precheck: tolerance=0.01"]
    row = [c.strip() for c in lines[5].strip("│").split("│")]
    assert row == ["line", "", "steps.create_line", 'job: limit=2, mode="fast"']
    assert "Shows [brackets] as written." in result.stdout
    assert not (pipeline_file.parent / "imported.marker").exists()


def test_show_json(pipeline_file: Path) -> None:
    result = runner.invoke(app, ["show", "--format", "json", "pipeline.yaml"])
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["name"] == "demo"
    # ${VAR}s are shown as written: no secret from the environment is printed.
    assert shown["context"] == {"dsn": "${CHOREO_TEST_SECRET:-x}"}
    assert "hunter2" not in result.stdout
    assert shown["resources"] == [
        {
            "name": "db",
            "factory": "steps:connect",
            "with": {"path": "${CHOREO_TEST_SECRET}"},
            "scope": "worker",
        }
    ]
    assert shown["steps"] == [
        {
            "name": "create [statement]",
            "description": None,
            "precheck": {"call": "steps:exists", "with": {"tolerance": 0.01}},
            "job": {"call": "steps:create", "with": {}},
            "retry": {
                "attempts": 3,
                "delay": 0.0,
                "backoff": 1.0,
                "max_delay": None,
                "on": ["Exception"],
            },
            "timeout": 5.0,
            "limits": {"precheck": [], "job": []},
        },
        {
            "name": "line",
            "description": None,
            "precheck": None,
            "job": {"call": "steps.create_line", "with": {"limit": 2, "mode": "fast"}},
            "retry": None,
            "timeout": None,
            "limits": {"precheck": [], "job": []},
        },
    ]
    assert (shown["limits"], shown["max_workers"], shown["halt"]) == ({}, None, None)
    assert not (pipeline_file.parent / "imported.marker").exists()


def test_show_json_lists_the_limits_and_what_waits_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pipeline.yaml").write_text(
        "version: 1\n"
        "limits:\n"
        "  crm_api: {rate: 600/min, burst: 5}\n"
        "  warehouse: {concurrency: 4}\n"
        "steps:\n"
        "  - name: push\n"
        "    precheck: {call: steps:exists, limit: crm_api}\n"
        "    job: {call: steps:push, limit: [warehouse]}\n"
        "    limit: crm_api\n"
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["show", "--format", "json", "pipeline.yaml"])
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["limits"] == {
        "crm_api": {"rate": "10/s", "burst": 5},
        "warehouse": {"concurrency": 4},
    }
    assert shown["steps"][0]["limits"] == {"precheck": ["crm_api"], "job": ["crm_api", "warehouse"]}


def test_show_says_what_protects_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pipeline.yaml").write_text(
        "version: 1\n"
        "limits: {crm_api: {rate: 600/min, burst: 5}}\n"
        "max_workers: 8\n"
        "halt: {failures: 2%, min_records: 500, consecutive: 25}\n"
        "steps:\n"
        "  - name: push\n"
        "    job: steps:push\n"
        "    limit: crm_api\n"
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["show", "--format", "json", "pipeline.yaml"])
    shown = json.loads(result.stdout)
    assert (shown["max_workers"], shown["halt"]) == (
        8,
        {"failures": "2%", "min_records": 500, "consecutive": 25},
    )
    table = runner.invoke(app, ["show", "pipeline.yaml"]).stdout
    assert "job: crm_api" in table  # the limit column
    table = " ".join(table.split())  # the caption wraps at the table's width
    for line in (
        "limit crm_api: rate 10/s, burst 5",
        "max_workers: 8",
        "halt: failures 2% (after 500 records), 25 consecutive failures",
    ):
        assert line in table


def test_show_on_a_broken_file_exits_2_with_the_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pipeline.yaml").write_text("version: 1\nsteps:\n  - name: a\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["show", "pipeline.yaml"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "pipeline.yaml:3:5: step 'a' is missing required key 'job'\n"
        "pipeline.yaml: not a usable pipeline file — see choreo validate\n"
    )


def test_show_on_a_missing_file_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["show", "nope.yaml"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "nope.yaml:1:1: cannot read the file: No such file or directory\n"
    )
