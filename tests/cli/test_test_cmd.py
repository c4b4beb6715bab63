"""`choreo test`: test files that pass, fail and are broken, in every format; -k, -q,
--timeout, --update; isolation between tests and between test files.

The fixture files are in tests/cases/test/: ``project`` (a pipeline and its passing
tests), ``failing`` (one test per kind of mismatch), ``broken`` (unusable test files
beside a good one) and ``leak`` (two folders with a fakes.py each).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.cli.conftest import CHOREO, ROOT, choreo_env

CASES = ROOT / "tests" / "cases" / "test"


def choreo(*args: str | Path, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``choreo ARGS`` in ``cwd``; stdout and stderr as text, never a traceback."""
    env = choreo_env()
    env.pop("CHOREO_T_PREFIX", None)  # the fixture pipeline's ${VAR}
    done = subprocess.run(
        [str(CHOREO), *(str(a) for a in args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert "Traceback" not in done.stdout, done.stdout
    return done


# -- passing ---------------------------------------------------------------------------------


def test_a_passing_file_prints_one_line_and_exits_0() -> None:
    # Also: no PATH is the current folder; tests see nothing of the tests before them
    # (context values, environment, resources, mocks); a step's timeout: bounds a test.
    done = choreo("test", cwd=CASES / "project")
    assert (done.returncode, done.stdout) == (0, "pipeline.test.yaml: 8 passed\n")
    assert done.stderr == "8 passed in 1 file\n"


def test_quiet_prints_the_total_only_and_k_selects_by_name() -> None:
    done = choreo("test", "-q", "-k", "mocks", "project", cwd=CASES)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "2 passed in 1 file\n")


def test_k_matching_no_test_is_a_usage_error() -> None:
    done = choreo("test", "-k", "no such test", "project", cwd=CASES)
    assert done.returncode == 2
    assert done.stdout == "project/pipeline.test.yaml: no test selected\n"
    assert done.stderr.endswith("choreo test: no test name contains 'no such test'\n")


def test_folders_are_searched_and_each_test_file_imports_alone(tmp_path: Path) -> None:
    # Folders a and b each have a fakes.py: b's tests must get b's, not a's (left in
    # sys.modules). Hidden folders, virtual environments and node_modules are skipped.
    shutil.copytree(CASES / "leak", tmp_path / "leak")
    shutil.copytree(CASES / "project", tmp_path / "project")
    for skipped in (".hidden", "venv", "node_modules"):
        (tmp_path / "leak" / skipped).mkdir()
        (tmp_path / "leak" / skipped / "x.test.yaml").write_text("not: [a test file\n")
    (tmp_path / "leak" / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    done = choreo("test", "leak", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (
        0,
        "leak/a/a.test.yaml: 1 passed\nleak/b/b.test.yaml: 1 passed\n",
    )


def test_a_folder_without_test_files_and_a_missing_path_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = choreo("test", "empty", "missing.test.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == (
        "empty:1:1: no test file in this folder — searched for *.test.yaml and *.test.yml "
        "files (hidden folders and virtual environments skipped)\n"
        "empty: not run (the test file is unusable)\n"
        "missing.test.yaml:1:1: no such file or folder\n"
        "missing.test.yaml: not run (the test file is unusable)\n"
    )


# -- failing ---------------------------------------------------------------------------------

FAILING_TEXT = """\
failing.test.yaml:6:23: test 'status', record 0: status: expected "failed", got "succeeded"
failing.test.yaml:10:25: test 'steps', record 0: steps.create: expected "succeeded", got "skipped"
failing.test.yaml:14:17: test 'errors', record 0: errors: expected [], got [{"step": "create", "phase": "job", "type": "ValueError", "message": "cannot create 2"}]
    --- expected
    +++ actual
    @@ -1 +1,8 @@
    -[]
    +[
    +  {
    +    "step": "create",
    +    "phase": "job",
    +    "type": "ValueError",
    +    "message": "cannot create 2"
    +  }
    +]
failing.test.yaml:15:39: test 'errors', record 1: errors[0].type: expected "Cancel", got "Skip"
failing.test.yaml:19:30: test 'data', record 0: data.job.create: expected 21, got 20
failing.test.yaml:19:42: test 'data', record 0: data.job.labels: expected "P-2", but the result has no 'labels'
failing.test.yaml:23:16: test 'exit code': exit_code: expected 0, `choreo run` would exit 1
failing.test.yaml:26:5: test 'records \\x1b[31m': expected 1 record, got 2 records (one expect: entry per input record)
failing.test.yaml: 1 passed, 6 failed
"""


def test_each_kind_of_mismatch_is_shown_where_it_is_expected() -> None:
    done = choreo("test", cwd=CASES / "failing")
    assert done.returncode == 1
    assert done.stdout == FAILING_TEXT
    assert done.stderr == "1 passed, 6 failed in 1 file\n"


def test_json_report() -> None:
    done = choreo("test", "--format", "json", cwd=CASES / "failing")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["passed"] is False
    assert report["counts"] == {"passed": 1, "failed": 6, "updated": 0, "unusable_files": 0}
    (file,) = report["files"]
    assert file["file"] == "failing.test.yaml" and file["usable"] is True
    tests = {t["name"]: t for t in file["tests"]}
    assert tests["passes"]["passed"] is True and tests["passes"]["exit_code"] == 0
    (data,) = [t for t in file["tests"] if t["name"] == "data"]
    assert data["failures"] == [
        {
            "line": 19,
            "column": 30,
            "kind": "mismatch",
            "message": "test 'data', record 0: data.job.create: expected 21, got 20",
            "record": 0,
            "path": "data.job.create",
            "expected": 21,
            "actual": 20,
        },
        {
            "line": 19,
            "column": 42,
            "kind": "mismatch",
            "message": (
                "test 'data', record 0: data.job.labels: expected \"P-2\", "
                "but the result has no 'labels'"
            ),
            "record": 0,
            "path": "data.job.labels",
            "expected": "P-2",
            "actual": None,
            "actual_missing": True,
        },
    ]
    assert tests["exit code"]["failures"][0]["path"] == "exit_code"
    assert (tests["exit code"]["failures"][0]["expected"], tests["exit code"]["exit_code"]) == (
        0,
        1,
    )


# A workflow command: properties escaped (no raw ',' or ':' in a value), the message on
# one line with %, CR and LF escaped.
WORKFLOW_COMMAND = re.compile(
    r"::(error|warning|notice) file=[^,:\r\n]+,line=\d+,col=\d+,title=[^,:\r\n]+::"
    r"(?:[^%\r\n]|%25|%0A|%0D)*"
)


def test_github_report_is_workflow_commands() -> None:
    done = choreo("test", "--format", "github", cwd=CASES / "failing")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert len(lines) == 8
    for line in lines:
        assert WORKFLOW_COMMAND.fullmatch(line), line
    assert lines[0] == (
        "::error file=failing.test.yaml,line=6,col=23,title=choreo test%3A status::"
        'test \'status\', record 0: status: expected "failed", got "succeeded"'
    )
    assert "%0A--- expected%0A+++ actual%0A" in lines[2]
    assert "\x1b" not in done.stdout and "\\x1b[31m" in lines[-1]


def test_junit_report_parses_as_junit_xml() -> None:
    done = choreo("test", "--format", "junit", "failing", "broken/good.test.yaml",
                  "broken/syntax.test.yaml", cwd=CASES)  # fmt: skip
    assert done.returncode == 2
    root = ET.fromstring(done.stdout)
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("9", "6", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [
        "failing/failing.test.yaml",
        "broken/good.test.yaml",
        "broken/syntax.test.yaml",
    ]
    unusable = suites[2].find("testcase/error")
    assert unusable is not None and (unusable.get("message") or "").startswith(
        "broken/syntax.test.yaml:3:1: YAML syntax error"
    )
    for suite in suites:
        cases = suite.findall("testcase")
        assert suite.get("tests") == str(len(cases))
        assert suite.get("failures") == str(sum(c.find("failure") is not None for c in cases))
        assert suite.get("errors") == str(sum(c.find("error") is not None for c in cases))
        for case in cases:
            assert case.get("classname") == suite.get("name")
            assert case.get("name") and float(case.get("time", "x")) >= 0
    data = suites[0].find("testcase[@name='data']")
    assert data is not None
    failure = data.find("failure")
    assert failure is not None and failure.get("message") == (
        "test 'data', record 0: data.job.create: expected 21, got 20"
    )
    assert failure.text is not None and "failing/failing.test.yaml:19:42:" in failure.text


# -- broken ----------------------------------------------------------------------------------

BROKEN_TEXT = """\
badpipeline.test.yaml:2:11: the pipeline file 'bad.yaml' does not load (1 problem; `choreo validate bad.yaml` lists them): bad.yaml:4:10: cannot import 'no_such_module:job': no module named 'no_such_module' — check the spelling, and that its directory is in python_path
badpipeline.test.yaml: not run (the test file is unusable)
broken.test.yaml:5:5: unknown key 'sett' — did you mean 'set'?
broken.test.yaml:7:7: the pipeline has no resource 'dbb' — did you mean 'db'?
broken.test.yaml:9:7: the pipeline has no step 'craete' — did you mean 'create'?
broken.test.yaml:12:28: unknown exception 'ValueErorr' — did you mean 'ValueError'? — name Skip, Cancel, a builtin exception (ValueError, ...) or a reference 'module:Class'
broken.test.yaml:13:35: data: goes with raises: Skip only, not ValueError
broken.test.yaml:15:28: 'fakes:shout' is not an exception class — name Skip, Cancel, a builtin exception (ValueError, ...) or a reference 'module:Class'
broken.test.yaml:16:41: step 'label': job fakes:shout: does not accept the keyword argument 'sufix' given in with: — did you mean 'suffix'?
broken.test.yaml:19:11: duplicate test name 'every kind of mistake': the test at line 4 has it already — test names must be unique in a file
broken.test.yaml:22:14: step 'label': a job mock needs exactly one of returns:, raises: or call: — it has returns: and raises:
broken.test.yaml:24:5: give input: (records) or input_lines: (raw lines), not both
broken.test.yaml: not run (the test file is unusable)
good.test.yaml: 1 passed
missing.test.yaml:2:11: pipeline file 'nowhere.yaml' not found (relative to this test file)
missing.test.yaml: not run (the test file is unusable)
syntax.test.yaml:3:1: YAML syntax error: while parsing a flow node: did not find expected node content
syntax.test.yaml: not run (the test file is unusable)
"""


def test_unusable_test_files_exit_2_and_the_others_still_run() -> None:
    done = choreo("test", cwd=CASES / "broken")
    assert done.returncode == 2
    assert done.stdout == BROKEN_TEXT
    assert done.stderr == "1 passed, 4 unusable test files in 5 files\n"


def test_unusable_test_files_as_github_annotations_and_json() -> None:
    done = choreo("test", "-f", "github", "broken/syntax.test.yaml", "broken/missing.test.yaml",
                  cwd=CASES)  # fmt: skip
    assert done.returncode == 2
    assert done.stdout.splitlines() == [
        "::error file=broken/syntax.test.yaml,line=3,col=1,title=choreo test::YAML syntax "
        "error: while parsing a flow node: did not find expected node content",
        "::error file=broken/missing.test.yaml,line=2,col=11,title=choreo test::pipeline file "
        "'nowhere.yaml' not found (relative to this test file)",
    ]
    done = choreo("test", "-f", "json", "broken/syntax.test.yaml", cwd=CASES)
    report = json.loads(done.stdout)
    assert report["files"][0]["usable"] is False
    assert report["files"][0]["problems"][0]["line"] == 3


# -- options ---------------------------------------------------------------------------------

HANGS = """\
version: 1
pipeline: pipeline.yaml
tests:
  - name: hangs
    input: [{id: 2}]
    expect: [{status: succeeded}]
  - name: runs after it
    mocks: {wait: {job: {returns: 1}}}
    input: [{id: 2}]
    expect: [{status: succeeded}]
"""


def test_timeout_bounds_each_test(tmp_path: Path) -> None:
    (tmp_path / "hang.py").write_text(
        "import time\n\n\ndef forever(ctx):\n    while not ctx.cancelled:\n"
        "        time.sleep(0.02)\n"
    )
    (tmp_path / "pipeline.yaml").write_text(
        "version: 1\nsteps:\n  - name: wait\n    job: hang:forever\n"
    )
    (tmp_path / "hang.test.yaml").write_text(HANGS)
    done = choreo("test", "--timeout", "0.3", cwd=tmp_path, timeout=20)
    assert done.returncode == 1
    assert done.stdout == (
        "hang.test.yaml:4:5: test 'hangs' did not finish within --timeout 0.3s (its records "
        "were told to stop) — give its steps a timeout:, or raise --timeout\n"
        "hang.test.yaml: 1 passed, 1 failed\n"
    )


def test_a_test_runs_without_the_pipelines_limits(tmp_path: Path) -> None:
    """Limits protect what a run writes to, which a test replaces: three records under a
    limit of one call a minute are tested at once, not in two minutes."""
    (tmp_path / "steps.py").write_text("def job(ctx, record):\n    return record\n")
    (tmp_path / "pipeline.yaml").write_text(
        "version: 1\nlimits:\n  api: {rate: 1/min}\n"
        "steps:\n  - name: a\n    job: steps:job\n    limit: api\n"
    )
    (tmp_path / "pipeline.test.yaml").write_text(
        "version: 1\npipeline: pipeline.yaml\ntests:\n  - name: three\n"
        "    input: [1, 2, 3]\n    expect: [{status: succeeded}, {status: succeeded}, "
        "{status: succeeded}]\n"
    )
    done = choreo("test", cwd=tmp_path, timeout=20)
    assert (done.returncode, done.stdout) == (0, "pipeline.test.yaml: 1 passed\n")


def test_what_a_test_logs_is_shown_with_its_failure_only(tmp_path: Path) -> None:
    """Logs are captured per test (as pytest does): nothing for a test that passed, the
    lines under a failure, escaped; never Python's raw last-resort output."""
    (tmp_path / "steps.py").write_text(
        "def job(ctx, record):\n    ctx.log.warning('careful with %s', record)\n    return record\n"
    )
    (tmp_path / "pipeline.yaml").write_text("version: 1\nsteps:\n  - name: a\n    job: steps:job\n")
    (tmp_path / "pipeline.test.yaml").write_text(
        "version: 1\npipeline: pipeline.yaml\ntests:\n"
        "  - name: passes\n    input: [1]\n    expect: [{status: succeeded}]\n"
        '  - name: fails\n    input: ["x\\e[2Ky"]\n    expect: [{status: failed}]\n'
    )
    done = choreo("test", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == (
        "pipeline.test.yaml:9:23: test 'fails', record 0: status: expected \"failed\", "
        'got "succeeded"\n'
        "    what test 'fails' logged:\n"
        "    WARNING choreo.step.a: careful with x\\x1b[2Ky\n"
        "pipeline.test.yaml: 1 passed, 1 failed\n"
    )
    assert done.stderr == "1 passed, 1 failed in 1 file\n"


def test_update_rewrites_the_expectations_of_failing_tests_only(tmp_path: Path) -> None:
    shutil.copytree(CASES / "project", tmp_path / "project")
    (tmp_path / "failing").mkdir()
    original = (CASES / "failing" / "failing.test.yaml").read_text(encoding="utf-8")
    path = tmp_path / "failing" / "failing.test.yaml"
    path.write_text(original, encoding="utf-8")
    done = choreo("test", "--update", "failing", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == (
        "failing/failing.test.yaml: updated 6 tests\n1 passed, 6 updated in 1 file\n"
    )
    # The report is of the file as it now stands: what was rewritten is not a failure.
    assert done.stdout == "failing/failing.test.yaml: 1 passed, 6 updated\n"
    updated = path.read_text(encoding="utf-8")
    # The passing test, the names and the inputs are left as they were.
    assert updated.endswith(
        "  - name: passes\n    input: [{id: 2}]\n    expect: [{status: succeeded}]\n"
    )
    assert updated.count("fail: true}") == 2
    assert "exit_code: 1" in updated and "exit_code: 0" not in updated
    again = choreo("test", "failing", cwd=tmp_path)
    assert (again.returncode, again.stdout) == (0, "failing/failing.test.yaml: 7 passed\n")


def test_schema_test_prints_the_test_file_schema() -> None:
    done = choreo("schema", "--test", cwd=ROOT)
    assert done.returncode == 0
    assert done.stdout == (ROOT / "schemas" / "test.schema.json").read_text(encoding="utf-8")
    assert json.loads(done.stdout)["title"] == "choreo test file"


@pytest.mark.parametrize("name", ["project/pipeline.test.yaml", "failing/failing.test.yaml"])
def test_validate_leaves_test_files_alone(name: str) -> None:
    done = choreo("validate", Path(name).parent, cwd=CASES)
    assert done.returncode == (0 if name.startswith("project") else 1)
    assert "test.yaml" not in done.stdout
