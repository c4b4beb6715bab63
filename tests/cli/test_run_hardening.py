"""`choreo run` against hostile inputs and settings: lines too long, too many workers,
FIFOs with a checkpoint, outputs that cannot be written, the summary on exit 2, deeply
nested records, exceptions without a message."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import CHOREO, choreo_env, parse_result_lines

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py

PIPELINE = """\
version: 1
steps:
  - name: mark
    job: steps:mark
"""

STEPS = """\
from pathlib import Path


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no str")


def mark(ctx, record):
    # Every record that runs leaves a trace: a refused run must leave none.
    with open(Path(__file__).parent / "ran.txt", "a") as f:
        f.write("ran\\n")
    if isinstance(record, dict) and record.get("unprintable"):
        raise Unprintable()
    return record
"""

LONG = b'"' + b"x" * 200 + b'"'
# Line 2 and line 6 (the last, without a line ending) are over 100 bytes; line 4 is blank.
INPUT = b'{"a": 1}\n' + LONG + b'\n{"a": 3}\n\n[4]\n' + b"y" * 150


@pytest.fixture
def pipeline(write_pipeline: WritePipeline) -> Path:
    return write_pipeline(PIPELINE, STEPS)


def _invalid_long(result: dict[str, Any], line: int, limit: int = 100) -> None:
    entry = {
        "step": None,
        "phase": "input",
        "type": "LineTooLong",
        "message": f"line longer than {limit} bytes",
    }
    assert result["line"] == line
    assert result["status"] == "invalid"
    assert result["error"] == entry
    assert result["errors"] == [entry]


# -- lines over --max-line-bytes ----------------------------------------------------------


def _marked(marks: list[str]) -> set[int]:
    """The line numbers a checkpoint's mark lines (``1-3 5``) say are finished; how they
    fall into lines depends on when the run flushed them."""
    numbers: set[int] = set()
    for token in " ".join(marks).split():
        first, _, last = token.partition("-")
        numbers.update(range(int(first), int(last or first) + 1))
    return numbers


@pytest.mark.parametrize(("executor", "workers"), [("thread", 1), ("thread", 3), ("process", 2)])
def test_a_line_over_max_line_bytes_is_invalid_at_its_line_and_the_run_goes_on(
    pipeline: Path, run_choreo: RunChoreo, tmp_path: Path, executor: str, workers: int
) -> None:
    (tmp_path / "in.jsonl").write_bytes(INPUT)
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "--max-line-bytes", "100"]
    args += ["--executor", executor, "-w", str(workers)]
    run = run_choreo([*args, "--checkpoint", "ck", "--rejects", "rejects.jsonl"])
    assert run.code == 1
    assert run.indices == [0, 1, 2, 3, 4]
    assert [r["line"] for r in run.lines] == [1, 2, 3, 5, 6]
    assert run.statuses == ["succeeded", "invalid", "succeeded", "succeeded", "invalid"]
    _invalid_long(run.lines[1], 2)
    _invalid_long(run.lines[4], 6)
    assert "invalid 2" in run.stderr
    # The checkpoint marks the long line 2 finished (its result line is out), never the
    # last line, which has no line ending yet.
    marks = (tmp_path / "ck").read_text().splitlines()[1:]
    assert _marked(marks) == {1, 2, 3, 5}
    # The rejects file holds line bytes as read: a long line's were never kept. It says so.
    assert (tmp_path / "rejects.jsonl").read_bytes() == b""
    assert (
        "warning: 2 input line(s) longer than --max-line-bytes (100) are not in "
        "rejects.jsonl (first: line 2): their bytes were not kept"
    ) in run.stderr
    # A rerun resumes after the finished lines: only the unfinished last line runs again.
    again = run_choreo([*args, "--checkpoint", "ck", "-q"])
    assert [r["line"] for r in again.lines] == [6]
    _invalid_long(again.lines[0], 6)


def test_a_line_over_max_line_bytes_on_stdin_with_include_input(
    pipeline: Path, run_choreo: RunChoreo
) -> None:
    run = run_choreo(
        ["run", "pipeline.yaml", "--max-line-bytes", "100", "--include-input", "-q"],
        input=INPUT,
    )
    assert run.code == 1
    assert [r["line"] for r in run.lines] == [1, 2, 3, 5, 6]
    _invalid_long(run.lines[1], 2)
    assert run.lines[1]["input"] is None
    assert [r["input"] for r in run.lines if r["status"] == "succeeded"] == [
        {"a": 1},
        {"a": 3},
        [4],
    ]


def test_a_line_exactly_at_max_line_bytes_is_read(pipeline: Path, run_choreo: RunChoreo) -> None:
    line = b'"' + b"x" * 98 + b'"'  # 100 bytes
    run = run_choreo(
        ["run", "pipeline.yaml", "--max-line-bytes", "100", "-q"], input=line + b"\n" + line
    )
    assert run.code == 0
    assert run.statuses == ["succeeded", "succeeded"]


def test_max_line_bytes_must_be_positive(pipeline: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml", "--max-line-bytes", "0"])
    assert run.code == 2
    assert "--max-line-bytes" in run.stderr


def test_an_endless_line_is_read_in_bounded_memory(pipeline: Path, tmp_path: Path) -> None:
    """/dev/zero is one line that never ends: the run reads it for ever, but its memory
    stays at about --max-line-bytes (here 1 MiB) however much it read."""
    proc = subprocess.Popen(
        [str(CHOREO), "run", "pipeline.yaml", "-i", "/dev/zero", "--max-line-bytes", "1048576"],
        cwd=tmp_path,
        env=choreo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(3)  # hundreds of MiB of zeros at the speed of a read
        assert proc.poll() is None
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        assert int(peak.split()[1]) < 200 * 1024, peak  # KiB
    finally:
        proc.kill()
        out, _ = proc.communicate()
    assert out == b""


# -- workers ------------------------------------------------------------------------------


def test_workers_above_4096_is_a_usage_error(pipeline: Path, run_choreo: RunChoreo) -> None:
    for args in (["-w", "100000"], ["--workers=4097"]):
        run = run_choreo(["run", "pipeline.yaml", *args], input=b"{}\n")
        assert run.code == 2, args
        assert "--workers" in run.stderr and "4096" in run.stderr
        assert run.stdout == b""


def test_workers_above_4096_in_the_pipeline_file_is_a_usage_error(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    write_pipeline("version: 1\nworkers: 5000\n" + PIPELINE.split("\n", 1)[1], STEPS)
    run = run_choreo(["run", "pipeline.yaml"], input=b"{}\n")
    assert run.code == 2
    assert run.stderr == (
        "error: pipeline.yaml: workers: 5000 is above the limit of 4096 records at once — "
        "give fewer workers in the file, or --workers N\n"
    )
    assert not (tmp_path / "ran.txt").exists()
    # --workers overrides the file.
    assert run_choreo(["run", "pipeline.yaml", "-w", "2", "-q"], input=b"{}\n").code == 0


def _limit_address_space() -> None:
    # 1 GiB: far less than 4096 thread stacks (8 MiB each by default) take.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_threads_the_system_will_not_start_are_a_usage_error_before_any_record(
    pipeline: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(CHOREO), "run", "pipeline.yaml", "-w", "4096", "--summary-json", "s.json"],
        input=b"{}\n" * 10,
        cwd=tmp_path,
        env=choreo_env(),
        capture_output=True,
        timeout=60,
        preexec_fn=_limit_address_space,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.endswith(
        "error: cannot start 4096 worker threads (can't start new thread): the system "
        "allows fewer threads; give fewer --workers\n"
    )
    assert done.stdout == b""
    assert not (tmp_path / "ran.txt").exists()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["exit_code"] == 2
    assert "cannot start 4096 worker threads" in summary["error"]


# -- a FIFO with --checkpoint ---------------------------------------------------------------


def test_a_fifo_input_with_a_checkpoint_is_refused_before_it_is_opened(
    pipeline: Path, tmp_path: Path
) -> None:
    os.mkfifo(tmp_path / "fifo")  # no writer: opening it would wait for ever
    started = time.monotonic()
    done = subprocess.run(
        [str(CHOREO), "run", "pipeline.yaml", "-i", "fifo", "--checkpoint", "ck"],
        cwd=tmp_path,
        env=choreo_env(),
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert time.monotonic() - started < 5
    assert done.returncode == 2
    assert done.stderr.decode() == (
        "error: --checkpoint needs a regular file as --input: fifo is a FIFO, which cannot "
        "be read again on a rerun\n"
    )
    assert not (tmp_path / "ck").exists()


def test_a_device_input_with_a_checkpoint_is_refused(pipeline: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml", "-i", "/dev/zero", "--checkpoint", "ck"])
    assert run.code == 2
    assert "/dev/zero is a character device" in run.stderr


# -- outputs that cannot be written ---------------------------------------------------------

OUTPUTS = {
    "--output": "results",
    "--rejects": "rejects",
    "--summary-json": "the summary",
    "--checkpoint": "the checkpoint",
}


@pytest.mark.parametrize("flag", sorted(OUTPUTS))
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("in.jsonl/out.json", "no directory in.jsonl"),
        ("missing/out.json", "no directory missing"),
        # Opens for writing as root; every write fails.
        ("/proc/version", "Input/output error"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_record(
    pipeline: Path,
    run_choreo: RunChoreo,
    tmp_path: Path,
    flag: str,
    path: str,
    reason: str,
) -> None:
    (tmp_path / "in.jsonl").write_bytes(b'{"a": 1}\n{"a": 2}\n')
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", flag, path])
    assert run.code == 2, run.stderr
    assert run.stdout == b""
    assert not (tmp_path / "ran.txt").exists()
    assert run.stderr == f"error: cannot write {OUTPUTS[flag]} to {path}: {reason}\n"


# -- --summary-json on exit 2 ---------------------------------------------------------------


def test_the_summary_json_is_rewritten_with_the_error_when_the_pipeline_is_unusable(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    write_pipeline("version: 1\nsteps:\n  - name: a\n    jbo: steps:mark\n", STEPS)
    (tmp_path / "s.json").write_text('{"exit_code": 0, "stale": true}\n')
    run = run_choreo(["run", "pipeline.yaml", "--summary-json", "s.json"], input=b"{}\n")
    assert run.code == 2
    summary = json.loads((tmp_path / "s.json").read_text())
    assert "stale" not in summary
    assert summary["exit_code"] == 2
    assert summary["records"] == {
        "total": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "invalid": 0, "resumed": 0
    }  # fmt: skip
    assert summary["error"] == run.stderr.rstrip("\n")
    assert "unknown key 'jbo'" in summary["error"]


def test_the_summary_json_has_the_error_of_every_refusal_before_any_record(
    pipeline: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    for args, error in (
        (["-i", "missing.jsonl"], "cannot read input missing.jsonl: No such file or directory"),
        (["--log-level", "loud"], "--log-level: unknown log level 'loud'"),
        (["--set", "novalue"], None),
        (["-o", "missing/out.jsonl"], "cannot write results to missing/out.jsonl: no directory"),
    ):
        (tmp_path / "s.json").write_text("stale\n")
        run = run_choreo(["run", "pipeline.yaml", *args, "--summary-json", "s.json"])
        assert run.code == 2, args
        summary = json.loads((tmp_path / "s.json").read_text())
        assert summary["exit_code"] == 2
        assert summary["error"] == run.stderr.removeprefix("error: ").rstrip("\n")
        if error is not None:
            assert summary["error"].startswith(error), summary["error"]


def test_a_summary_json_that_is_the_trouble_is_not_written(
    pipeline: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_bytes(b'{"a": 1}\n')
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--summary-json", "in.jsonl"])
    assert run.code == 2
    assert "--summary-json in.jsonl is the same file as --input in.jsonl" in run.stderr
    assert (tmp_path / "in.jsonl").read_bytes() == b'{"a": 1}\n'  # the input, untouched


@pytest.mark.parametrize(("stdin", "code"), [(b'{"a": 1}\n', 0), (b'{"unprintable": 1}\n', 1)])
def test_the_summary_json_is_written_on_exit_0_and_1(
    pipeline: Path, run_choreo: RunChoreo, tmp_path: Path, stdin: bytes, code: int
) -> None:
    run = run_choreo(["run", "pipeline.yaml", "-q", "--summary-json", "s.json"], input=stdin)
    assert run.code == code
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["exit_code"], summary["error"]) == (code, None)


# -- --include-input writes the line's JSON text; messages the same on every executor --------

DEEP = b"[" * 900 + b"]" * 900


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_include_input_writes_a_deeply_nested_record_as_it_was_read(
    pipeline: Path, run_choreo: RunChoreo, executor: str
) -> None:
    spaced = b'\t{"n": 123456789012345678901234567890, "deep": ' + DEEP + b"} \r"
    run = run_choreo(
        ["run", "pipeline.yaml", "--include-input", "-q", "--executor", executor],
        input=DEEP + b"\n" + spaced + b"\n",
    )
    assert run.code == 0, run.stderr
    assert run.statuses == ["succeeded", "succeeded"]
    first, second = run.stdout.splitlines()
    assert first.endswith(b',"input":' + DEEP + b"}")
    assert second.endswith(
        b',"input":{"n": 123456789012345678901234567890, "deep": ' + DEEP + b"}}"
    )


def test_an_exception_whose_str_raises_has_one_message_on_every_executor(
    pipeline: Path, run_choreo: RunChoreo
) -> None:
    outputs = []
    for executor in ("thread", "process"):
        run = run_choreo(
            ["run", "pipeline.yaml", "-q", "--executor", executor],
            input=b'{"unprintable": 1}\n',
        )
        assert run.code == 1
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1]
    error = parse_result_lines(outputs[0])[0]["error"]
    assert error["message"] == "<str() of the exception failed: RuntimeError('no str')>"
