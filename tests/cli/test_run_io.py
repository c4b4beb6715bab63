"""`choreo run` input and output: stdin and files, line formats, streaming, a closed stdout."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py
StartChoreo = Callable[..., "subprocess.Popen[bytes]"]  # start_choreo fixture of conftest.py
ParseResults = Callable[[bytes], list[dict[str, Any]]]

ECHO = """\
version: 1
steps:
  - name: echo
    job: steps:echo
"""

ECHO_STEPS = """\
import time


def echo(ctx, record):
    if isinstance(record, dict) and record.get("sleep"):
        time.sleep(record["sleep"])
    return record
"""


def _jsonl(*records: Any) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a pipe, failing the test when none arrives within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    data = b""
    fd = stream.fileno()
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            raise AssertionError(f"no complete line within {timeout} s (got {data!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"the output ended before a complete line (got {data!r})")
        data += chunk
    return data


@pytest.fixture
def echo(write_pipeline: WritePipeline) -> Path:
    return write_pipeline(ECHO, ECHO_STEPS)


def test_reads_stdin_by_default(echo: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml", "--include-data"], input=_jsonl({"a": 1}, [2]))
    assert run.code == 0
    assert [line["data"]["job"]["echo"] for line in run.lines] == [{"a": 1}, [2]]


def test_dash_is_stdin(echo: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml", "-i", "-", "-o", "-"], input=_jsonl(1, 2, 3))
    assert (run.code, run.indices) == (0, [0, 1, 2])


def test_reads_an_input_file(echo: Path, run_choreo: RunChoreo, tmp_path: Path) -> None:
    (tmp_path / "records.jsonl").write_bytes(_jsonl(*range(5)))
    run = run_choreo(["run", "pipeline.yaml", "--input", "records.jsonl", "--include-input"])
    assert run.code == 0
    assert [line["input"] for line in run.lines] == [0, 1, 2, 3, 4]


def test_empty_input_is_a_successful_run(echo: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml"], input=b"")
    assert (run.code, run.stdout) == (0, b"")
    assert run.stderr.startswith("records: 0 (succeeded 0, failed 0, cancelled 0, invalid 0)\n")


def test_output_file_gets_the_lines_and_stdout_stays_empty(
    echo: Path,
    run_choreo: RunChoreo,
    tmp_path: Path,
    read_output: Callable[[Path], list[dict[str, Any]]],
) -> None:
    run = run_choreo(
        ["run", "pipeline.yaml", "--output", "out/results.jsonl", "-q"],
        input=_jsonl(1, 2),
        cwd=tmp_path,
    )
    # A directory that does not exist is unusable output.
    assert (run.code, run.stdout) == (2, b"")
    assert "out/results.jsonl" in run.stderr
    run = run_choreo(["run", "pipeline.yaml", "-o", "results.jsonl", "-q"], input=_jsonl(1, 2))
    assert (run.code, run.stdout, run.stderr) == (0, b"", "")
    results = read_output(tmp_path / "results.jsonl")
    assert [r["index"] for r in results] == [0, 1]


def test_blank_lines_are_ignored_but_counted_in_line_numbers(
    echo: Path, run_choreo: RunChoreo
) -> None:
    run = run_choreo(["run", "pipeline.yaml"], input=b"\n1\n\n   \n\t\n2\n\r\n3\n\n")
    assert run.code == 0
    assert run.indices == [0, 1, 2]
    assert [line["line"] for line in run.lines] == [2, 6, 8]


def test_bom_crlf_and_last_line_without_newline(echo: Path, run_choreo: RunChoreo) -> None:
    data = b'\xef\xbb\xbf{"a": 1}\r\n"x"\r\n\r\n[3]'
    run = run_choreo(["run", "pipeline.yaml", "--include-input"], input=data)
    assert run.code == 0, run.stderr
    assert [line["input"] for line in run.lines] == [{"a": 1}, "x", [3]]
    assert [line["line"] for line in run.lines] == [1, 2, 4]


def test_bom_in_an_input_file(echo: Path, run_choreo: RunChoreo, tmp_path: Path) -> None:
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    run = run_choreo(["run", "pipeline.yaml", "-i", "bom.jsonl", "--include-input"])
    assert run.code == 0, run.stderr
    assert run.lines[0]["input"] == {"a": 1}


def test_any_json_value_is_a_record(echo: Path, run_choreo: RunChoreo) -> None:
    values = [{"a": 1}, [1, 2], "text", 42, 2.5, True, False, None, {"nested": {"x": [None]}}]
    run = run_choreo(["run", "pipeline.yaml", "--include-input"], input=_jsonl(*values))
    assert run.code == 0
    assert [line["input"] for line in run.lines] == values


def test_stdout_carries_only_result_lines_and_stderr_the_messages(
    write_pipeline: WritePipeline, run_choreo: RunChoreo
) -> None:
    write_pipeline(
        "version: 1\nsteps:\n  - name: loud\n    job: steps:loud\n",
        """\
        def loud(ctx, record):
            ctx.log.warning("warning from record %s", ctx.index)
            ctx.log.error("error from record %s", ctx.index)
            if record == 2:
                raise ValueError("two")
            return record
        """,
    )
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl(1, 2, 3) + b"bad\n")
    assert run.code == 1
    # run_choreo has validated every stdout line against the schema: nothing else is there.
    assert len(run.stdout.splitlines()) == len(run.lines) == 4
    assert "warning from record 0" in run.stderr and "error from record 2" in run.stderr
    assert "records: 4 (succeeded 2, failed 1, cancelled 0, invalid 1)" in run.stderr


def test_a_result_line_reaches_a_pipe_while_the_run_goes_on(
    echo: Path, start_choreo: StartChoreo, tmp_path: Path, parse_results: ParseResults
) -> None:
    (tmp_path / "in.jsonl").write_bytes(_jsonl({"id": 0}, {"sleep": 3}))
    started = time.monotonic()
    process = start_choreo(["run", "pipeline.yaml", "-i", "in.jsonl"])
    assert process.stdout is not None
    first = _readline(process.stdout, timeout=10)
    first_at = time.monotonic()
    rest, stderr = process.communicate(timeout=30)
    ended_at = time.monotonic()
    assert process.returncode == 0, stderr
    lines = parse_results(first + rest)
    assert [line["index"] for line in lines] == [0, 1]
    # The second record sleeps 3 s after the first ended: its line was out long before.
    assert ended_at - first_at > 1.5, (first_at - started, ended_at - started)


def test_lines_stream_from_an_open_stdin_pipe(
    echo: Path, start_choreo: StartChoreo, parse_results: ParseResults
) -> None:
    process = start_choreo(["run", "pipeline.yaml", "-q"], stdin=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    received = b""
    for number in range(3):
        process.stdin.write(_jsonl({"n": number}))
        process.stdin.flush()
        received += _readline(process.stdout, timeout=10)
    process.stdin.close()
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None and process.stderr.read() == b""
    rest = process.stdout.read()
    assert [line["index"] for line in parse_results(received + rest)] == [0, 1, 2]


def test_closed_stdout_ends_the_run_quietly_with_141(
    echo: Path, start_choreo: StartChoreo, tmp_path: Path
) -> None:
    # `choreo run ... | head -1`: the reader goes away after one line.
    (tmp_path / "in.jsonl").write_bytes(_jsonl(*({"sleep": 0.002, "n": i} for i in range(5000))))
    process = start_choreo(
        ["run", "pipeline.yaml", "-i", "in.jsonl", "--summary-json", "summary.json"]
    )
    assert process.stdout is not None and process.stderr is not None
    first = _readline(process.stdout, timeout=10)
    assert json.loads(first)["index"] == 0
    process.stdout.close()
    started = time.monotonic()
    code = process.wait(timeout=20)
    stderr = process.stderr.read().decode()
    assert code == 141, stderr
    assert time.monotonic() - started < 5  # it did not run the remaining records
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["broken_pipe"] is True and summary["exit_code"] == 141
    assert summary["records"]["total"] < 5000


def test_closed_stdout_with_workers_and_a_rejects_file(
    echo: Path, start_choreo: StartChoreo, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_bytes(_jsonl(*({"sleep": 0.001, "n": i} for i in range(5000))))
    process = start_choreo(
        ["run", "pipeline.yaml", "-i", "in.jsonl", "-w", "4", "--rejects", "rejects.jsonl"]
    )
    assert process.stdout is not None and process.stderr is not None
    _readline(process.stdout, timeout=10)
    process.stdout.close()
    code = process.wait(timeout=20)
    stderr = process.stderr.read().decode()
    assert code == 141, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


def test_closed_stdout_while_waiting_for_input_ends_the_run(
    echo: Path, start_choreo: StartChoreo
) -> None:
    process = start_choreo(["run", "pipeline.yaml"], stdin=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    process.stdin.write(_jsonl({"n": 0}))
    process.stdin.flush()
    _readline(process.stdout, timeout=10)
    process.stdout.close()
    # The next line cannot be written; the run must not wait for more input to notice.
    process.stdin.write(_jsonl({"n": 1}))
    process.stdin.flush()
    assert process.wait(timeout=10) == 141
    stderr = process.stderr.read().decode()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_exits_1_with_a_message(echo: Path, run_choreo: RunChoreo) -> None:
    run = run_choreo(["run", "pipeline.yaml", "-o", "/dev/full"], input=_jsonl(1, 2))
    assert (run.code, run.stdout) == (1, b"")
    assert "/dev/full" in run.stderr
    assert "No space left on device" in run.stderr


def test_a_closed_stdout_at_start_is_a_usage_error(echo: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        ["sh", "-c", f"'{Path(sys.executable).parent / 'choreo'}' run pipeline.yaml >&-"],
        input=_jsonl(1, 2),
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.decode() == (
        "error: cannot write stdout: standard output is closed; give --output FILE\n"
    )


def test_a_closed_stderr_keeps_exit_codes(echo: Path, tmp_path: Path) -> None:
    choreo = Path(sys.executable).parent / "choreo"
    for command, code in (
        (f"'{choreo}' run pipeline.yaml 2>&-", 0),
        (f"'{choreo}' run missing.yaml 2>&-", 2),
        (f"'{choreo}' validate missing.yaml >&- 2>&-", 1),
        (f"'{choreo}' --version >&-", 0),
    ):
        done = subprocess.run(
            ["sh", "-c", command],
            input=_jsonl(1, 2),
            capture_output=True,
            cwd=tmp_path,
            check=False,
        )
        assert done.returncode == code, command


def test_a_summary_path_in_no_directory_is_refused_before_any_record(
    echo: Path, run_choreo: RunChoreo
) -> None:
    run = run_choreo(
        ["run", "pipeline.yaml", "--summary-json", "missing/summary.json"], input=_jsonl(1)
    )
    assert (run.code, run.stdout) == (2, b"")
    assert run.stderr == (
        "error: cannot write the summary to missing/summary.json: no directory missing\n"
    )


PRINTING = """\
version: 1
resources:
  conn:
    factory: steps:connect
steps:
  - name: chatty
    job: steps:chatty
"""

PRINTING_STEPS = """\
import os
import subprocess
import sys


def connect():
    print("resource: connecting")
    return object()


def chatty(ctx, record):
    ctx.resources.conn
    print(f"print {record}")
    sys.stdout.flush()
    os.write(1, b"fd 1 write\\n")
    subprocess.run([sys.executable, "-c", "print('child process')"], check=True)
    return record
"""


@pytest.mark.parametrize("executor", ["thread", "process", "dask"])
def test_what_steps_print_goes_to_stderr_not_between_the_result_lines(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, executor: str
) -> None:
    """print(), a write to descriptor 1 and a child process's output, in the main process
    and in worker processes: stdout carries the result lines only."""
    pipeline = write_pipeline(PRINTING, PRINTING_STEPS)
    run = run_choreo(
        ["run", pipeline, "--executor", executor, "-w", "2"], input=_jsonl(1, 2, 3), timeout=60
    )
    assert run.code == 0
    assert [line["index"] for line in run.lines] == [0, 1, 2]
    assert run.stdout.count(b"\n") == 3
    for text in ("resource: connecting", "print 3", "fd 1 write", "child process"):
        assert text in run.stderr


CHOREO_COMMAND = str(Path(sys.executable).parent / "choreo")


def _choreo_in(tmp_path: Path, command: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, capture_output=True, cwd=tmp_path, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "in.jsonl"], "--output in.jsonl is the same file as --input in.jsonl"),
        (["--rejects", "in.jsonl"], "--rejects in.jsonl is the same file as --input in.jsonl"),
        (["--checkpoint", "link.jsonl"], "--checkpoint link.jsonl is the same file as --input"),
        (
            ["-o", "out.jsonl", "--summary-json", "out.jsonl"],
            "--summary-json out.jsonl is the same file as --output out.jsonl",
        ),
    ],
)
def test_a_file_named_for_two_roles_is_refused_before_it_is_touched(
    echo: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    """An output that is the input was emptied before a record was read (exit 0, every
    record lost); two outputs overwrote each other."""
    data = _jsonl(1, 2)
    (tmp_path / "in.jsonl").write_bytes(data)
    (tmp_path / "out.jsonl").write_bytes(b"kept\n")
    (tmp_path / "link.jsonl").symlink_to("in.jsonl")
    done = _choreo_in(tmp_path, [CHOREO_COMMAND, "run", "pipeline.yaml", "-i", "in.jsonl", *args])
    assert done.returncode == 2
    assert done.stderr.decode().startswith(f"error: {message}")
    assert done.stdout == b""
    assert (tmp_path / "in.jsonl").read_bytes() == data
    assert (tmp_path / "out.jsonl").read_bytes() == b"kept\n"


def test_stdin_and_stdout_count_as_the_files_behind_them(echo: Path, tmp_path: Path) -> None:
    data = _jsonl(1, 2)
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    for command, message in [
        ("choreo run pipeline.yaml -o in.jsonl < in.jsonl", "--output in.jsonl is the same"),
        ("choreo run pipeline.yaml -i in.jsonl >> in.jsonl", "standard output is the same"),
    ]:
        done = _choreo_in(
            tmp_path, ["sh", "-c", command.replace("choreo", f"'{CHOREO_COMMAND}'", 1)]
        )
        assert done.returncode == 2, command
        assert done.stderr.decode().startswith(f"error: {message}"), command
        assert path.read_bytes() == data
    # What is not a regular file may stand for several: results and summary both dropped.
    devnull_twice = ["-o", os.devnull, "--summary-json", os.devnull]
    done = _choreo_in(
        tmp_path, [CHOREO_COMMAND, "run", "pipeline.yaml", "-i", "in.jsonl", *devnull_twice]
    )
    assert done.returncode == 0
