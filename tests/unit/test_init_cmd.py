"""`choreo init` in-process: the name as YAML, refusals (exit 2), and nothing left behind."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from choreo_cli.cli.app import app
from choreo_cli.cli.console import Console
from choreo_cli.cli.init_cmd import (
    STARTER_FILES,
    StarterFile,
    render_starter,
    write_starter,
    yaml_string,
)
from choreo_cli.cli.streams import Streams
from choreo_cli.core.exit_codes import ExitCode
from choreo_cli.pipeline.yaml_loader import load_yaml


def invoke(args: list[str]) -> tuple[int, str]:
    stderr = io.StringIO()
    streams = Streams(stdin=None, stdout=io.StringIO(), stderr=stderr, environ={})
    outcome = CliRunner().invoke(app, ["init", *args], obj=streams)
    assert outcome.output == ""
    return outcome.exit_code, stderr.getvalue()


@settings(derandomize=True, database=None, max_examples=200, deadline=None)
@given(st.text(st.characters(codec="utf-8") | st.sampled_from("\x85\u2028\ufeff\x7f\udcff")))
def test_any_name_reads_back_as_itself(name: str) -> None:
    text = f"name: {yaml_string(name)}\n"
    assert "\n" not in text[:-1]
    assert load_yaml(text).data["name"] == name


@pytest.mark.parametrize("name", ["orders", "my-pipeline", "load v2.1", "Statements_2024", "a"])
def test_a_simple_name_is_written_plain(name: str) -> None:
    assert yaml_string(name) == name


@pytest.mark.parametrize("name", ["true", "No", "null", "12", "1.5", "a: b", "x #y", " a", "é"])
def test_a_name_yaml_would_read_otherwise_is_quoted(name: str) -> None:
    assert yaml_string(name).startswith('"')


def test_the_starter_files_come_from_the_package() -> None:
    files = {f.name: f.text for f in render_starter("orders")}
    assert list(files) == list(STARTER_FILES)
    assert "\nname: orders\n" in files["pipeline.yaml"]
    assert "{{" not in "".join(files.values())
    compile(files["steps.py"], "steps.py", "exec")
    assert load_yaml(files["pipeline.test.yaml"]).data["pipeline"] == "pipeline.yaml"


def test_an_empty_name_is_exit_2(tmp_path: Path) -> None:
    for name in ("", "   "):
        code, stderr = invoke(["--name", name, str(tmp_path / "new")])
        assert code == ExitCode.USAGE
        assert stderr == "error: --name is empty — give the pipeline a name, e.g. --name orders\n"
    assert not (tmp_path / "new").exists()


def test_a_file_as_dir_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "file").touch()
    code, stderr = invoke([str(tmp_path / "file")])
    assert code == ExitCode.USAGE
    assert stderr.endswith("file is not a directory — choose a directory for the new pipeline\n")


def test_a_write_that_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    stderr = io.StringIO()
    files = [StarterFile("one.txt", "1"), StarterFile("missing/two.txt", "2")]
    code = write_starter(tmp_path / "new" / "dir", files, Console(stderr, fancy=False))
    assert code == ExitCode.USAGE
    assert stderr.getvalue() == (
        f"error: cannot write {tmp_path}/new/dir/missing/two.txt: No such file or directory"
        " — nothing was written\n"
    )
    assert list(tmp_path.iterdir()) == []
