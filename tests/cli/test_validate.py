"""`choreo validate`: the case folders, formats, exit codes, isolation and --no-import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from choreo_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "cases" / "validate"
CHOREO = Path(sys.executable).parent / "choreo"

runner = CliRunner()


def _cases(kind: str) -> list[Path]:
    return sorted(p for p in (CASES / kind).iterdir() if (p / "pipeline.yaml").is_file())


def _run_case(case: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.chdir(case)
    monkeypatch.delenv("CHOREO_TEST_SURELY_UNSET", raising=False)
    args_file = case / "args.txt"
    extra = args_file.read_text().split() if args_file.exists() else []
    result = runner.invoke(app, ["validate", "pipeline.yaml", *extra])
    return result.exit_code, result.stdout, result.stderr


def _expected(case: Path) -> str:
    expected = case / "expected.txt"
    return expected.read_text(encoding="utf-8") if expected.exists() else ""


@pytest.mark.parametrize("case", _cases("bad"), ids=lambda p: p.name)
def test_bad_case(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, stdout, stderr = _run_case(case, monkeypatch)
    assert stdout == _expected(case)
    assert code == 1
    assert "error" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("case", _cases("good"), ids=lambda p: p.name)
def test_good_case(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, stdout, stderr = _run_case(case, monkeypatch)
    assert stdout == _expected(case)
    assert code == 0
    assert stderr.startswith("ok: 1 file valid")


def test_every_bad_case_has_its_expected_messages() -> None:
    for case in _cases("bad"):
        assert _expected(case).strip(), f"{case.name} has no expected.txt"


def test_the_sample_pipelines_validate_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = sorted(str(p) for p in (ROOT / "sample_pipelines").glob("*/pipeline.yaml"))
    assert samples
    result = runner.invoke(app, ["validate", *samples])
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == f"ok: {len(samples)} files valid\n"


def _write(directory: Path, pipeline: str, steps: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if steps is not None:
        (directory / "steps.py").write_text(steps)
    path = directory / "pipeline.yaml"
    path.write_text(pipeline)
    return path


def _choreo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CHOREO_TEST_SURELY_UNSET"}
    return subprocess.run(
        [str(CHOREO), *args], cwd=cwd, capture_output=True, text=True, env=env, check=False
    )


def test_each_file_is_checked_as_if_alone(tmp_path: Path) -> None:
    _write(
        tmp_path / "one",
        "version: 1\nsteps: [{name: a, job: steps:first}]\n",
        "def first(ctx): ...\n",
    )
    _write(
        tmp_path / "two",
        "version: 1\nsteps: [{name: a, job: steps:second}]\n",
        "def second(ctx): ...\n",
    )
    _write(tmp_path / "three", "version: 1\nsteps: [{name: a, job: steps:first}]\n")
    done = _choreo(
        "validate", "one/pipeline.yaml", "two/pipeline.yaml", "three/pipeline.yaml", cwd=tmp_path
    )
    assert done.stdout == (
        "three/pipeline.yaml:2:24: cannot import 'steps:first': no module named 'steps' — "
        "check the spelling, and that its directory is in python_path\n"
    )
    assert done.stderr == "1 error in 1 of 3 files\n"
    assert done.returncode == 1


def test_no_import_imports_no_user_code(tmp_path: Path) -> None:
    marker = tmp_path / "imported.marker"
    steps = (
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\ndef f(ctx):\n    return 1\n"
    )
    _write(
        tmp_path,
        "version: 1\nsteps: [{name: a, job: steps:f}, {name: b, job: steps:nope}]\n",
        steps,
    )
    done = _choreo("validate", "--no-import", "pipeline.yaml", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "ok: 1 file valid\n")
    assert not marker.exists()
    done = _choreo("validate", "pipeline.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert marker.exists()


def test_an_unreadable_file_is_that_files_problem(tmp_path: Path) -> None:
    _write(tmp_path, "version: 1\nsteps: [{name: a, job: builtins.print}]\n")
    done = _choreo("validate", "pipeline.yaml", "missing.yaml", cwd=tmp_path)
    assert done.stdout == "missing.yaml:1:1: cannot read the file: No such file or directory\n"
    assert done.stderr == "1 error in 1 of 2 files\n"
    assert done.returncode == 1


@pytest.mark.parametrize(
    "args",
    [["validate"], ["validate", "--format", "xml", "p.yaml"], ["validate", "--bogus", "p.yaml"]],
)
def test_a_usage_error_exits_2(args: list[str], tmp_path: Path) -> None:
    done = _choreo(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert "Usage:" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


BROKEN = "version: 1\nworkers: 0\nsteps: [{name: 'a', job: builtins.print}]\n"


def test_json_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, BROKEN)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", "--format", "json", "pipeline.yaml"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "valid": False,
        "errors": 1,
        "warnings": 0,
        "files": [
            {
                "file": "pipeline.yaml",
                "valid": False,
                "problems": [
                    {
                        "line": 2,
                        "column": 10,
                        "severity": "error",
                        "message": "'workers' must be at least 1, not 0",
                    }
                ],
            }
        ],
    }


def test_github_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "a,b", BROKEN)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", "--format", "github", "a,b/pipeline.yaml"])
    assert result.exit_code == 1
    assert result.stdout == (
        "::error file=a%2Cb/pipeline.yaml,line=2,col=10,title=choreo validate::"
        "'workers' must be at least 1, not 0\n"
    )


def test_warnings_do_not_fail_unless_strict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(
        tmp_path,
        "version: 1\ncontext: {a: '${CHOREO_TEST_SURELY_UNSET}'}\nsteps: [{name: a, job: builtins.print}]\n",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHOREO_TEST_SURELY_UNSET", raising=False)
    relaxed = runner.invoke(app, ["validate", "--format", "github", "pipeline.yaml"])
    assert relaxed.exit_code == 0
    assert relaxed.stdout.startswith("::warning file=pipeline.yaml,line=2,col=14,")
    strict = runner.invoke(app, ["validate", "--strict", "pipeline.yaml"])
    assert strict.exit_code == 1
    assert strict.stderr == "1 error in 1 of 1 file\n"


def test_version_and_help_import_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "from choreo_cli.cli.app import app\n"
        "for args in (['--version'], ['--help'], ['validate', '--help']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('yaml', 'jsonschema')\n"
        "         or m in ('rich.table', 'rich.progress')]\n"
        "print(heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "[]"
