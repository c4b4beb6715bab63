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
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "see choreo validate --help" in done.stderr and "Traceback" not in done.stderr
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


# -- YAML 1.2, as editors and the schema read the file ------------------------------------


def test_scalars_are_yaml_1_2(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "version: 1\nname: no\ndescription: 2024-01-01\nworkers: 1:30\n"
        "steps: [{name: yes, job: builtins.print}]\n",
    )
    done = _choreo("validate", "pipeline.yaml", cwd=tmp_path)
    assert done.stdout == "pipeline.yaml:4:10: 'workers' must be an integer, not a string\n"
    assert (done.returncode, done.stderr) == (1, "1 error in 1 of 1 file\n")
    _write(
        tmp_path, "version: 1\nname: no\nworkers: 0x2\nsteps: [{name: on, job: builtins.print}]\n"
    )
    done = _choreo("validate", "pipeline.yaml", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "ok: 1 file valid\n")


# -- a tag is one problem among the others ------------------------------------------------

TAGGED = """\
version: 1
nmae: x
workers: 0
context:
  shell: !!python/object/apply:os.system ["echo pwned"]
steps:
  - name: a
    job: !custom builtins.print
  - name: A
    job: builtins.nope
"""


def test_a_tag_is_reported_with_every_other_problem(tmp_path: Path) -> None:
    _write(tmp_path, TAGGED)
    done = _choreo("validate", "pipeline.yaml", cwd=tmp_path)
    assert done.stdout == (
        "pipeline.yaml:2:1: unknown key 'nmae' — did you mean 'name'?\n"
        "pipeline.yaml:3:10: 'workers' must be at least 1, not 0\n"
        "pipeline.yaml:5:10: tag '!!python/object/apply:os.system' on a sequence is not "
        "supported — choreo reads plain YAML only and never runs tags\n"
        "pipeline.yaml:8:10: tag '!custom' is not supported — choreo reads plain YAML only "
        "and never runs tags\n"
        "pipeline.yaml:9:11: duplicate step name 'A': 'a' at line 7 has it already — "
        "step names must be unique, ignoring case\n"
        "pipeline.yaml:10:10: cannot import 'builtins.nope': 'builtins' has no attribute "
        "'nope' — did you mean 'open'?\n"
    )
    assert (done.returncode, done.stderr) == (1, "6 errors in 1 of 1 file\n")


def test_run_still_refuses_a_tagged_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _write(
        tmp_path,
        f"version: 1\ncontext: {{x: !!python/object/apply:os.system ['touch {marker}']}}\n"
        "steps: [{name: a, job: builtins.print}]\n",
    )
    done = _choreo("run", "pipeline.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "pipeline.yaml:2:14: tag '!!python/object/apply:os.system' on a sequence" in done.stderr
    assert done.stdout == "" and not marker.exists()


# -- python_path entries that are no directory -------------------------------------------


def test_python_path_entries_that_are_no_directory(tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text("")
    absolute = tmp_path / "nowhere"
    _write(
        tmp_path / "a" / "b",
        f"version: 1\npython_path: ['../../evil.py', '{absolute}', lib]\n"
        "steps: [{name: a, job: builtins.print}]\n",
    )
    done = _choreo("validate", "a/b/pipeline.yaml", cwd=tmp_path)
    assert done.stdout == (
        "a/b/pipeline.yaml:2:15: warning: python_path entry '../../evil.py' (relative to the "
        "pipeline file) is not a directory — name the directory that holds the modules\n"
        f"a/b/pipeline.yaml:2:32: warning: python_path directory '{absolute}' does not exist\n"
        f"a/b/pipeline.yaml:2:{36 + len(str(absolute))}: warning: python_path directory 'lib' "
        "does not exist (relative to the pipeline file)\n"
    )
    assert (done.returncode, done.stderr) == (0, "ok: 1 file valid (3 warnings)\n")


# -- folders ---------------------------------------------------------------------------------

GOOD = "version: 1\nsteps: [{name: a, job: builtins.print}]\n"
BAD = "version: 1\nworkers: 0\nsteps: [{name: a, job: builtins.print}]\n"


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_folder_is_searched_for_pipeline_files(tmp_path: Path) -> None:
    _tree(
        tmp_path / "repo",
        {
            "pipeline.yaml": GOOD,
            "b/deep/er/load.yml": BAD,
            "b/a.yaml": GOOD,
            "b/broken.yaml": "version: 1\nsteps:\n  - name: a\n   job: x\n",  # syntax error
            "flow.yaml": "{version: 1, steps: [{name: a, job: builtins.print}]}\n",
            # Not pipelines: other YAML, a test file, lists, other files.
            "ci.yaml": "jobs: {build: {steps: [{run: make}]}}\n",
            "list.yaml": "- steps: 1\n",
            "pipeline.test.yaml": "version: 1\npipeline: pipeline.yaml\nsteps: []\n",
            "k8s.yaml": "kind: Pod\n---\nkind: Service\n",
            "steps.py": "steps: 1\n",
            "notes.txt": "steps: 1\n",
            # Skipped folders: hidden, a virtual environment, installed packages.
            ".git/hooks/pipeline.yaml": BAD,
            ".venv/pipeline.yaml": BAD,
            "env/pyvenv.cfg": "home = /usr\n",
            "env/lib/pipeline.yaml": BAD,
            "node_modules/x/pipeline.yaml": BAD,
        },
    )
    done = _choreo("validate", "repo", cwd=tmp_path)
    assert done.stdout == (
        "repo/b/broken.yaml:4:4: YAML syntax error: while parsing a block collection: "
        "did not find expected '-' indicator\n"
        "repo/b/deep/er/load.yml:2:10: 'workers' must be at least 1, not 0\n"
    )
    assert (done.returncode, done.stderr) == (1, "2 errors in 2 of 5 files\n")
    done = _choreo("validate", "--format", "json", ".", cwd=tmp_path / "repo")
    assert [f["file"] for f in json.loads(done.stdout)["files"]] == [
        "b/a.yaml",
        "b/broken.yaml",
        "b/deep/er/load.yml",
        "flow.yaml",
        "pipeline.yaml",
    ]


def test_a_named_file_is_checked_whatever_it_holds_and_only_once(tmp_path: Path) -> None:
    _tree(tmp_path, {"ci.yaml": "jobs: {}\n", "p/pipeline.yaml": GOOD})
    done = _choreo("validate", "ci.yaml", "p/pipeline.yaml", "p", "./p/", cwd=tmp_path)
    assert done.stdout == (
        "ci.yaml:1:1: the pipeline is missing required key 'version' (add 'version: 1')\n"
        "ci.yaml:1:1: the pipeline is missing required key 'steps'\n"
        "ci.yaml:1:1: unknown key 'jobs' — allowed here: version, name, description, workers, "
        "max_workers, precheck_errors, halt, python_path, context, resources, limits, steps, "
        "defaults, or x-... for your own anchors\n"
    )
    assert (done.returncode, done.stderr) == (1, "3 errors in 1 of 2 files\n")


def test_a_folder_without_a_pipeline_file_is_reported(tmp_path: Path) -> None:
    _tree(tmp_path, {"empty/ci.yaml": "jobs: {}\n", "p/pipeline.yaml": GOOD})
    done = _choreo("validate", "p", "empty", cwd=tmp_path)
    assert done.stdout == (
        "empty:1:1: no pipeline file in this folder — searched for *.yaml and *.yml files "
        "with a top-level 'steps:' key; name a file to check it whatever it holds\n"
    )
    assert (done.returncode, done.stderr) == (1, "1 error in 1 of 2 files\n")


def test_a_symlinked_folder_is_not_followed_but_a_symlinked_file_is(tmp_path: Path) -> None:
    _tree(tmp_path, {"outside/pipeline.yaml": BAD, "repo/real/pipeline.yaml": GOOD})
    (tmp_path / "repo" / "linked").symlink_to(tmp_path / "outside")
    (tmp_path / "repo" / "link.yaml").symlink_to(tmp_path / "outside" / "pipeline.yaml")
    done = _choreo("validate", "repo", cwd=tmp_path)
    assert done.stdout == "repo/link.yaml:2:10: 'workers' must be at least 1, not 0\n"
    assert (done.returncode, done.stderr) == (1, "1 error in 1 of 2 files\n")
