"""`choreo init [DIR]`: a starter pipeline that validates, passes its tests and runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from choreo_cli.cli.init_cmd import STARTER_FILES
from choreo_cli.pipeline.yaml_loader import load_yaml
from tests.cli.conftest import CHOREO, ROOT, RunChoreo, choreo_env


def test_right_after_init_validate_test_and_run_exit_0(
    run_choreo: RunChoreo, tmp_path: Path
) -> None:
    init = run_choreo(["init", "starter"])
    assert init.code == 0, init.stderr
    assert init.stdout == b""
    directory = tmp_path / "starter"
    assert sorted(p.name for p in directory.iterdir()) == sorted(STARTER_FILES)
    assert init.stderr == (
        "wrote pipeline.yaml, steps.py, pipeline.test.yaml, records.jsonl,"
        " pipeline.schema.json in starter\n"
        "next, try:\n"
        "  cd starter\n"
        "  choreo validate pipeline.yaml\n"
        "  choreo test\n"
        "  choreo run pipeline.yaml -i records.jsonl\n"
    )

    validate = run_choreo(["validate", "pipeline.yaml"], cwd=directory)
    assert validate.code == 0, validate.stderr
    # `choreo test` reports on stdout, which run_choreo reads as result lines.
    test = subprocess.run(
        [str(CHOREO), "test"], cwd=directory, env=choreo_env(), capture_output=True, timeout=30
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert test.stdout == b"pipeline.test.yaml: 2 passed\n"
    run = run_choreo(["run", "pipeline.yaml", "-i", "records.jsonl"], cwd=directory)
    assert run.code == 0, run.stderr
    assert run.statuses == ["succeeded"] * 3
    assert [line["steps"]["welcome"] for line in run.lines] == ["succeeded", "skipped", "succeeded"]

    pipeline = (directory / "pipeline.yaml").read_text(encoding="utf-8")
    assert pipeline.startswith("# yaml-language-server: $schema=pipeline.schema.json\n")
    assert load_yaml(pipeline).data["name"] == "starter"
    schema = ROOT / "schemas" / "pipeline.schema.json"
    assert (directory / "pipeline.schema.json").read_bytes() == schema.read_bytes()
    tests = load_yaml((directory / "pipeline.test.yaml").read_text(encoding="utf-8")).data
    assert [t["expect"][0]["steps"] for t in tests["tests"]] == [
        {"welcome": "succeeded"},
        {"welcome": "skipped"},
    ]


def test_init_never_overwrites_and_names_every_file_in_the_way(
    run_choreo: RunChoreo, tmp_path: Path
) -> None:
    (tmp_path / "records.jsonl").write_text("mine\n", encoding="utf-8")
    (tmp_path / "steps.py").mkdir()
    (tmp_path / "pipeline.yaml").symlink_to(tmp_path / "nowhere")  # dangling: still in the way
    result = run_choreo(["init"])
    assert result.code == 2
    assert result.stderr == (
        "error: pipeline.yaml already exists\n"
        "error: steps.py already exists\n"
        "error: records.jsonl already exists\n"
        "error: nothing was written: choreo init never overwrites a file"
        " — start in a new directory, e.g. choreo init my-pipeline\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pipeline.yaml",
        "records.jsonl",
        "steps.py",
    ]
    assert (tmp_path / "records.jsonl").read_text(encoding="utf-8") == "mine\n"


def test_init_in_the_current_directory_says_no_cd(run_choreo: RunChoreo, tmp_path: Path) -> None:
    result = run_choreo(["init"])
    assert result.code == 0, result.stderr
    assert "cd " not in result.stderr and "in the current directory\n" in result.stderr
    pipeline = load_yaml((tmp_path / "pipeline.yaml").read_text(encoding="utf-8")).data
    assert pipeline["name"] == tmp_path.name


def test_dir_and_its_parents_are_created_and_name_names_the_pipeline(
    run_choreo: RunChoreo, tmp_path: Path
) -> None:
    name = 'orders: "EU" # 2024\nnext line \\ é'
    result = run_choreo(["init", "--name", name, "a/b c/d"])
    assert result.code == 0, result.stderr
    assert "  cd 'a/b c/d'\n" in result.stderr
    directory = tmp_path / "a" / "b c" / "d"
    assert sorted(p.name for p in directory.iterdir()) == sorted(STARTER_FILES)
    pipeline = load_yaml((directory / "pipeline.yaml").read_text(encoding="utf-8"))
    assert pipeline.data["name"] == name
