"""The files of `choreo run`: one file for one role (by identity and by resolved path), every
output writable before the first record, and a checkpoint that never marks an unfinished
last line (README "Commands" and "Re-running safely")."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import CHOREO, RunChoreo, WritePipeline, choreo_env

PIPELINE = """\
version: 1
steps:
  - name: echo
    job: steps:echo
"""

# Each call leaves a line in calls.txt: a test sees whether a record ran at all.
STEPS = """\
def echo(ctx, record):
    with open("calls.txt", "a") as calls:
        calls.write(f"{record}\\n")
    return record
"""

FAILING_RESOURCE = """\
version: 1
resources:
  db:
    factory: steps:broken
steps:
  - name: echo
    job: steps:echo
"""

BROKEN_STEPS = """\
def broken():
    raise ConnectionError("the database is down")


def echo(ctx, record):
    return record
"""

DATA = b'{"id": 1}\n{"id": 2}\n'


@pytest.fixture
def echo(write_pipeline: WritePipeline, tmp_path: Path) -> Path:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    return write_pipeline(PIPELINE, STEPS)


def _calls(tmp_path: Path) -> list[str]:
    calls = tmp_path / "calls.txt"
    return calls.read_text().splitlines() if calls.exists() else []


def _files(tmp_path: Path) -> set[str]:
    return {path.name for path in tmp_path.iterdir() if path.name != "__pycache__"}


# -- one file, one role: paths that do not exist yet -------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-o", "out.jsonl", "--summary-json", "out.jsonl"],
            "--summary-json out.jsonl is the same file as --output out.jsonl",
        ),
        (
            ["-o", "x", "--checkpoint", "x"],
            "--checkpoint x is the same file as --output x",
        ),
        (
            ["-o", "./out.jsonl", "--rejects", "sub/../out.jsonl"],
            "--rejects sub/../out.jsonl is the same file as --output ./out.jsonl",
        ),
        (
            ["--rejects", "real/r.jsonl", "--summary-json", "link/r.jsonl"],
            "--summary-json link/r.jsonl is the same file as --rejects real/r.jsonl",
        ),
        (
            ["-o", "dangling.jsonl", "--checkpoint", "target.jsonl"],
            "--checkpoint target.jsonl is the same file as --output dangling.jsonl",
        ),
    ],
)
def test_a_new_file_named_for_two_roles_is_refused(
    echo: Path, run_choreo: RunChoreo, tmp_path: Path, args: list[str], message: str
) -> None:
    """Before, the summary replaced the result lines (exit 0, no result line left) and
    checkpoint spans were spliced into result lines: the guard compared existing files only."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "dangling.jsonl").symlink_to("target.jsonl")
    before = _files(tmp_path)
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", *args])
    assert (run.code, run.stdout) == (2, b"")
    assert run.stderr == f"error: {message}: give each its own file\n"
    assert _calls(tmp_path) == []
    assert _files(tmp_path) == before  # nothing made, nothing left


def test_a_hard_link_is_the_same_file(echo: Path, run_choreo: RunChoreo, tmp_path: Path) -> None:
    (tmp_path / "out.jsonl").write_bytes(b"kept\n")
    os.link(tmp_path / "out.jsonl", tmp_path / "hard.jsonl")
    run = run_choreo(
        ["run", "pipeline.yaml", "-i", "in.jsonl", "-o", "out.jsonl", "--rejects", "hard.jsonl"]
    )
    assert run.code == 2
    assert run.stderr.startswith("error: --rejects hard.jsonl is the same file as --output")
    assert (tmp_path / "out.jsonl").read_bytes() == b"kept\n"


@pytest.mark.parametrize(
    "args",
    [
        ["--summary-json", "/dev/stdout"],
        ["--rejects", "/dev/stdout"],
        ["--summary-json", "/proc/self/fd/1"],
        ["--rejects", "/dev/fd/1"],
        ["-o", "-", "--checkpoint", "/dev/stdout"],
    ],
)
def test_naming_the_stdout_that_carries_the_results_is_refused(
    echo: Path, run_choreo: RunChoreo, tmp_path: Path, args: list[str]
) -> None:
    """Before, the summary or the rejects named /dev/stdout went to stderr (stdout is
    pointed at stderr while the run runs), or where stdout could not be pointed elsewhere
    between the result lines."""
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", *args])
    assert (run.code, run.stdout) == (2, b"")
    flag, path = args[-2:]
    assert run.stderr == (
        f"error: {flag} {path} is the same file as standard output: give each its own file\n"
    )
    assert _calls(tmp_path) == []


def test_what_is_not_a_regular_file_may_still_serve_several_roles(
    echo: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    run = run_choreo(
        ["run", "pipeline.yaml", "-i", "in.jsonl", "-o", os.devnull, "--summary-json", os.devnull]
    )
    assert (run.code, run.stdout) == (0, b"")
    # The summary on stderr (as text, and as JSON) is no result line on stdout.
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--summary-json", "/dev/stderr"])
    assert run.code == 0
    assert len(run.lines) == 2
    assert '"succeeded": 2' in run.stderr
    # Results in a file: stdout carries nothing else, the summary may go there.
    args = ["-o", "out.jsonl", "--summary-json", "/dev/stdout"]
    done = subprocess.run(
        [CHOREO, "run", "pipeline.yaml", "-i", "in.jsonl", *args],
        capture_output=True,
        cwd=tmp_path,
        env=choreo_env(),
        check=False,
    )
    assert done.returncode == 0
    assert json.loads(done.stdout)["records"]["succeeded"] == 2
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 2


# -- every output writable before the first record ----------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--summary-json", "adir"], "cannot write the summary to adir: Is a directory"),
        (["-o", "adir"], "cannot write results to adir: Is a directory"),
        (["--rejects", "adir"], "cannot write rejects to adir: Is a directory"),
        (["--checkpoint", "adir"], "cannot write the checkpoint to adir: Is a directory"),
        (
            ["--rejects", "in.jsonl/r.jsonl"],
            "cannot write rejects to in.jsonl/r.jsonl: no directory in.jsonl",
        ),
        (
            ["--summary-json", "missing/s.json"],
            "cannot write the summary to missing/s.json: no directory missing",
        ),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_first_record(
    echo: Path, run_choreo: RunChoreo, tmp_path: Path, args: list[str], message: str
) -> None:
    """Before, a --summary-json naming a directory was found out after every record ran
    (exit 1)."""
    (tmp_path / "adir").mkdir()
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", *args])
    assert (run.code, run.stdout) == (2, b"")
    assert run.stderr == f"error: {message}\n"
    assert _calls(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file")
def test_a_read_only_summary_is_refused_before_the_first_record(
    echo: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    (tmp_path / "s.json").write_text("old\n")
    (tmp_path / "s.json").chmod(0o444)
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--summary-json", "s.json"])
    assert run.code == 2
    assert run.stderr == "error: cannot write the summary to s.json: Permission denied\n"
    assert _calls(tmp_path) == []


def test_the_check_truncates_nothing_and_leaves_no_file_behind(
    echo: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    """The outputs checked before a later one is refused: an existing file keeps its bytes,
    a new one is not left behind; but for the summary, which is written on exit 2 too
    (with the error), so that a stale one is never read."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "old.json").write_bytes(b"old results\n")
    (tmp_path / "old.ckpt").write_bytes(b"not a checkpoint\n")
    before = _files(tmp_path)
    for args in (
        ["-o", "new.jsonl", "--rejects", "new.rejects", "--summary-json", "summary.json"],
        ["-o", "old.json", "--rejects", "old.ckpt", "--summary-json", "summary.json"],
    ):
        # --checkpoint is checked last.
        run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", *args, "--checkpoint", "adir"])
        assert run.code == 2
        summary = json.loads((tmp_path / "summary.json").read_bytes())
        assert summary["error"] == "cannot write the checkpoint to adir: Is a directory"
        (tmp_path / "summary.json").unlink()
        assert _files(tmp_path) == before
        assert (tmp_path / "old.json").read_bytes() == b"old results\n"
        assert (tmp_path / "old.ckpt").read_bytes() == b"not a checkpoint\n"
    # Refused for another reason once the outputs were checked: nothing left either.
    run = run_choreo(
        ["run", "missing.yaml", "-i", "in.jsonl", "-o", "new.jsonl", "--summary-json", "new.json"]
    )
    assert run.code == 2
    assert json.loads((tmp_path / "new.json").read_bytes())["exit_code"] == 2
    (tmp_path / "new.json").unlink()
    assert _files(tmp_path) == before


def test_a_new_checkpoint_is_not_left_behind_when_a_resource_fails(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    """Before, the checkpoint (made before the resources were built) stayed, holding the
    input's fingerprint: with the input then corrected, the next run was refused."""
    write_pipeline(FAILING_RESOURCE, BROKEN_STEPS)
    (tmp_path / "in.jsonl").write_bytes(DATA)
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "-o", "out.jsonl"]
    run = run_choreo([*args, "--checkpoint", "run.ckpt", "--rejects", "r.jsonl"])
    assert run.code == 2
    assert "the database is down" in run.stderr
    assert not (tmp_path / "run.ckpt").exists()
    assert not (tmp_path / "r.jsonl").exists()


def test_no_new_file_is_left_behind_when_stdout_is_closed(echo: Path, tmp_path: Path) -> None:
    """Results for a stdout closed at start are refused once the checkpoint and the rejects
    file were made: before, both stayed (the checkpoint pinning the input's fingerprint)."""
    before = _files(tmp_path)
    command = f"'{CHOREO}' run pipeline.yaml -i in.jsonl --checkpoint c.ckpt --rejects r.jsonl >&-"
    done = subprocess.run(["sh", "-c", command], capture_output=True, cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert b"standard output is closed" in done.stderr
    assert _files(tmp_path) == before


def test_an_existing_summary_is_written_at_the_end(
    echo: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    (tmp_path / "s.json").write_text("old\n")
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--summary-json", "s.json"])
    assert run.code == 0
    assert json.loads((tmp_path / "s.json").read_text())["records"]["succeeded"] == 2


# -- an unfinished last line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("executor", "workers"), [("thread", "1"), ("thread", "2"), ("process", "2")]
)
@pytest.mark.parametrize("tail", [b'{"id":', b'{"id": 2}'])
def test_an_unfinished_last_line_is_processed_but_never_marked(
    echo: Path, run_choreo: RunChoreo, tmp_path: Path, executor: str, workers: str, tail: bytes
) -> None:
    """A producer mid-write: the last line has no line ending yet. Before, it was marked
    finished (an invalid line, or a record that ran), and the rerun over the completed
    line skipped it: the record never ran, exit 0."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"id": 1}\n' + tail)
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "--checkpoint", "run.ckpt"]
    args += ["--executor", executor, "-w", workers, "--summary-json", "s.json"]
    first = run_choreo(args, timeout=60)
    assert [line["line"] for line in first.lines] == [1, 2]
    assert first.code == (1 if tail == b'{"id":' else 0)
    # The producer finishes the line (and writes another).
    source.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id": 3}\n')
    again = run_choreo(args, timeout=60)
    assert again.code == 0
    assert [(line["line"], line["status"]) for line in again.lines] == [
        (2, "succeeded"),
        (3, "succeeded"),
    ]
    records = json.loads((tmp_path / "s.json").read_text())["records"]
    assert (records["resumed"], records["succeeded"]) == (1, 2)
    # Once every line ended, all are marked: a third run runs nothing.
    third = run_choreo(args, timeout=60)
    assert (third.code, third.lines) == (0, [])
