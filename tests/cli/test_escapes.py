"""No raw control characters from a file, a record or an exception on the terminal, and JSON
outputs that are valid UTF-8 whatever the file names (design §11)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import CHOREO, RunChoreo, WritePipeline, choreo_env

# What a file must never send to a terminal: C0 controls but the line ending, DEL, C1
# controls, the Unicode line separators and the bidirectional overrides.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
RAW_BYTES = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")

# A step key that, printed raw, erases the line of the real error and writes a fake
# verdict, then hides what follows.
HOSTILE = r"""version: 1
steps:
  - name: "a\e[31m\rb\x9b"
    job: steps:job
    "x\r\e[2Kok: 1 file valid\e[8m": 1
"""
HOSTILE_PROBLEMS = [
    r"pipeline.yaml:5:5: unknown key 'x\r\x1b[2Kok: 1 file valid\x1b[8m' — allowed here: "
    "name, description, precheck, job, retry, timeout, limit",
]
STEPS = """\
def job(ctx, record):
    ctx.log.warning("value %s", record["v"])
    if record.get("boom"):
        raise ValueError("bad\\r\\x1b[2Kvalue\\x9b\\nERROR fake")
    return None


def connect(**kwargs):
    raise ConnectionError("refused\\r\\x1b[2Kall good\\u2028fake")
"""


def choreo(
    directory: Path, *args: str | Path, input: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """Run the real command in ``directory``; unlike ``run_choreo``, stdout may be anything
    (a report, a table) and stderr may hold a traceback that a step logged."""
    return subprocess.run(
        [str(CHOREO), *(str(a) for a in args)],
        input=input,
        capture_output=True,
        env=choreo_env(),
        cwd=directory,
        timeout=60,
        check=False,
    )


def assert_no_raw_controls(text: str) -> None:
    found = RAW.findall(text)
    assert not found, f"raw control characters {found!r} in {text!r}"


def non_utf8_path(directory: Path, stem: bytes) -> Path:
    """``directory/stem.yaml`` where ``stem`` is not UTF-8; skips when the file system refuses."""
    name = os.fsdecode(stem + b".yaml")
    path = directory / name
    try:
        path.write_bytes(b"")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses file names that are not UTF-8")
    return path


# -- validate -------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--no-import"]], ids=["import", "no-import"])
def test_validate_text_escapes_a_hostile_key(
    write_pipeline: WritePipeline, tmp_path: Path, extra: list[str]
) -> None:
    write_pipeline(HOSTILE, STEPS)
    done = choreo(tmp_path, "validate", *extra, "pipeline.yaml")
    assert done.returncode == 1
    assert done.stdout.decode("utf-8").splitlines() == HOSTILE_PROBLEMS
    assert not RAW_BYTES.search(done.stdout.replace(b"\n", b""))
    assert done.stderr == b"1 error in 1 of 1 file\n"


def test_validate_github_sends_no_raw_control_character(
    write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(HOSTILE, STEPS)
    done = choreo(tmp_path, "validate", "--format", "github", "pipeline.yaml")
    assert done.returncode == 1
    (line,) = done.stdout.decode("utf-8").splitlines()
    assert line.endswith(
        r"::unknown key 'x%0D\x1b[2Kok: 1 file valid\x1b[8m' — allowed here: "
        "name, description, precheck, job, retry, timeout, limit"
    )
    assert_no_raw_controls(line)


def test_validate_json_keeps_the_text_and_is_valid_utf8_for_any_file_name(
    tmp_path: Path,
) -> None:
    path = non_utf8_path(tmp_path, b"bad\xff")
    path.write_text(HOSTILE, encoding="utf-8")
    done = choreo(tmp_path, "validate", "--format", "json", "--no-import", path.name)
    assert done.returncode == 1
    report = json.loads(done.stdout.decode("utf-8"))  # strict UTF-8: no raw 0xff byte
    (file,) = report["files"]
    assert file["file"] == r"bad\xff.yaml"
    # JSON escapes control characters itself: the key is kept as it was written.
    assert file["problems"][0]["message"].startswith("unknown key 'x\r\x1b[2Kok: 1 file valid")


def test_validate_text_shows_an_undecodable_file_name_escaped(tmp_path: Path) -> None:
    path = non_utf8_path(tmp_path, b"bad\xff")
    path.write_text("version: 1\nsteps: []\n", encoding="utf-8")
    done = choreo(tmp_path, "validate", "--no-import", path.name)
    assert done.stdout.startswith(rb"bad\xff.yaml:")
    done.stdout.decode("utf-8")


# -- run ------------------------------------------------------------------------------------


def test_run_on_an_unusable_pipeline_escapes_its_problems(
    run_choreo: RunChoreo, write_pipeline: WritePipeline
) -> None:
    write_pipeline(HOSTILE, STEPS)
    done = run_choreo(["run", "pipeline.yaml", "-i", os.devnull])
    assert done.code == 2
    assert done.stderr.splitlines() == HOSTILE_PROBLEMS


def test_run_on_an_undecodable_file_name_escapes_it(run_choreo: RunChoreo, tmp_path: Path) -> None:
    path = non_utf8_path(tmp_path, b"bad\xfe")
    path.write_text("version: 1\n", encoding="utf-8")
    done = run_choreo(["run", path.name, "-i", os.devnull])
    assert done.code == 2
    assert done.stderr.startswith(r"bad\xfe.yaml:")
    assert "\ufffd" not in done.stderr  # no byte that is not UTF-8 on stderr


def test_run_escapes_step_names_log_lines_and_exception_messages(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(
        """\
        version: 1
        steps:
          - name: "step\\e[31m\\r\\x9bred"
            job: steps:job
            retry: {attempts: 2, on: [ValueError]}
        """,
        STEPS,
    )
    records = '{"v": "a\\r\\u001b[2Kb\\nWARNING fake"}\n{"v": 1, "boom": true}\n'
    done = run_choreo(["run", "pipeline.yaml", "--summary-json", "summary.json"], input=records)
    assert done.code == 1
    assert_no_raw_controls(done.stderr)
    lines = done.stderr.splitlines()
    logger = r"choreo.step.step\x1b[31m\r\x9bred"
    assert lines[:4] == [
        rf"WARNING {logger}: value a\r\x1b[2Kb\nWARNING fake (record 0, line 1)",
        f"WARNING {logger}: value 1 (record 1, line 2)",
        rf"WARNING {logger}: attempt 1 of 2 failed (ValueError: bad\r\x1b[2Kvalue\x9b\nERROR "
        "fake); retrying in 0 s (record 1, line 2)",
        f"WARNING {logger}: value 1 (record 1, line 2)",
    ]
    # The record that failed was tried twice: one retry. (Timing columns may follow.)
    assert lines[5].split()[:6] == ["step", "ran", "skipped", "failed", "cancelled", "retries"]
    assert lines[6].split()[:6] == [r"step\x1b[31m\r\x9bred", "2", "0", "1", "0", "1"]
    # Data outputs keep the name as it is.
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["steps"]) == ["step\x1b[31m\r\x9bred"]
    assert done.lines[1]["error"]["message"] == "bad\r\x1b[2Kvalue\x9b\nERROR fake"


def test_run_escapes_the_message_of_a_failing_resource(
    run_choreo: RunChoreo, write_pipeline: WritePipeline
) -> None:
    write_pipeline(
        """\
        version: 1
        resources: {db: {factory: steps:connect}}
        steps:
          - {name: a, job: steps:job}
        """,
        STEPS,
    )
    done = run_choreo(["run", "pipeline.yaml", "-i", os.devnull])
    assert done.code == 2
    assert_no_raw_controls(done.stderr)
    assert r"refused\r\x1b[2Kall good\u2028fake" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_traceback_keeps_its_lines_and_loses_its_control_characters(
    write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(
        """\
        version: 1
        steps:
          - {name: a, job: steps:log_exception}
        """,
        STEPS
        + """

def log_exception(ctx, record):
    try:
        raise RuntimeError("inner\\x1b[31m\\rline")
    except RuntimeError:
        ctx.log.exception("caught %s", record["v"])
""",
    )
    done = choreo(tmp_path, "run", "pipeline.yaml", input=b'{"v": "x\\ny"}\n')
    assert done.returncode == 0
    stderr = done.stderr.decode("utf-8")
    assert_no_raw_controls(stderr)
    lines = stderr.splitlines()
    assert lines[0] == r"ERROR choreo.step.a: caught x\ny (record 0, line 1)"
    assert lines[1] == "Traceback (most recent call last):"
    assert r"RuntimeError: inner\x1b[31m\rline" in lines


# -- show -----------------------------------------------------------------------------------

SHOWN = r"""version: 1
name: "n\e]0;title\a"
description: "line one\nline two\r\e[2K"
steps:
  - name: "s\r\e[2Kx"
    job: {call: "steps:job", with: {"k\e[8m": "v\u009b"}}
    retry: {attempts: 3, on: [ConnectionError, "steps:Missing"]}
"""


def test_show_table_escapes_what_the_file_says(
    write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(SHOWN)
    done = choreo(tmp_path, "show", "pipeline.yaml")
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode("utf-8")
    assert_no_raw_controls(text)
    lines = text.splitlines()
    assert lines[0].strip() == r"n\x1b]0;title\x07"
    assert [c.strip() for c in lines[4].strip("│").split("│")] == [
        r"s\r\x1b[2Kx",
        "",
        "steps:job",
        r'job: k\x1b[8m="v\x9b"',
    ]
    # A description keeps its lines.
    assert [line.strip() for line in lines[-2:]] == ["line one", r"line two\r\x1b[2K"]


def test_show_on_a_broken_file_escapes_its_problems(
    run_choreo: RunChoreo, write_pipeline: WritePipeline
) -> None:
    write_pipeline(HOSTILE)
    done = run_choreo(["show", "pipeline.yaml"])
    assert done.code == 2
    assert done.stderr.splitlines() == [
        *HOSTILE_PROBLEMS,
        "pipeline.yaml: not a usable pipeline file — see choreo validate",
    ]


def test_show_json_has_retry_on_and_a_utf8_file_name(tmp_path: Path) -> None:
    path = non_utf8_path(tmp_path, b"show\xfe")
    path.write_text(SHOWN, encoding="utf-8")
    done = choreo(tmp_path, "show", "--format", "json", path.name)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout.decode("utf-8"))
    assert shown["file"] == r"show\xfe.yaml"
    (step,) = shown["steps"]
    assert step["name"] == "s\r\x1b[2Kx"
    assert step["retry"] == {
        "attempts": 3,
        "delay": 0.0,
        "backoff": 1.0,
        "max_delay": None,
        "on": ["ConnectionError", "steps:Missing"],
    }


def test_show_on_a_terminal_sends_no_raw_control_character(
    write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    """The rich table on a terminal (colour on) escapes as the plain one does."""
    pty = pytest.importorskip("pty")
    write_pipeline(SHOWN)
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [str(CHOREO), "show", "pipeline.yaml"],
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            env=choreo_env({"TERM": "xterm", "COLUMNS": "120"}),
        )
    finally:
        os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal is gone once the process has ended
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None
    process.stderr.close()
    # rich's own colours are allowed; nothing else is.
    text = re.sub(r"\x1b\[[0-9;]*m", "", output.decode("utf-8")).replace("\r\n", "\n")
    assert_no_raw_controls(text)
    assert r"n\x1b]0;title\x07" in text
