"""`choreo run` in-process over injected streams: what it writes where, and each exit code."""

from __future__ import annotations

import io
import json
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from choreo_cli.cli.run_options import RunOptions
from choreo_cli.cli.run_session import execute
from choreo_cli.cli.streams import Streams
from choreo_cli.core.exit_codes import ExitCode

MakeModule = Any  # the make_module fixture of tests/conftest.py

STEPS = """
import os, signal


def work(ctx, record):
    if record.get("fail"):
        raise ValueError("no " + record["name"])
    if record.get("interrupt"):
        raise KeyboardInterrupt
    if record.get("terminate"):
        os.kill(os.getpid(), signal.SIGTERM)
    return record["name"]
"""


class Run:
    """What one in-process `choreo run` did."""

    def __init__(self, code: ExitCode, streams: Streams) -> None:
        self.code = code
        streams.stdout.flush()
        stdout = streams.stdout.buffer
        assert isinstance(stdout, io.BytesIO)
        assert isinstance(streams.stderr, io.StringIO)
        self.stdout = stdout.getvalue()
        self.stderr = streams.stderr.getvalue()

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


class BrokenPipe(io.BytesIO):
    """A stdout whose reader went away."""

    def write(self, data: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.fixture(autouse=True)
def _clean_logger() -> Iterator[None]:
    logger = logging.getLogger("choreo")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def pipeline(tmp_path: Path, make_module: MakeModule) -> Path:
    make_module("session_steps", STEPS)
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        textwrap.dedent(
            """
            version: 1
            steps:
              - name: work
                job: session_steps:work
            """
        ),
        encoding="utf-8",
    )
    return path


def memory_streams(stdin: bytes | None, *, stdout: io.BytesIO | None = None) -> Streams:
    return Streams(
        stdin=None if stdin is None else io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"),
        stdout=io.TextIOWrapper(stdout if stdout is not None else io.BytesIO(), encoding="utf-8"),
        stderr=io.StringIO(),
        environ={},
    )


def run(options: RunOptions, stdin: bytes | None, **kwargs: Any) -> Run:
    streams = memory_streams(stdin, **kwargs)
    return Run(execute(options, streams=streams), streams)


def jsonl(*records: Any) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def test_result_lines_go_to_the_given_stdout_and_the_summary_to_its_stderr(
    pipeline: Path,
) -> None:
    done = run(RunOptions(pipeline=pipeline), jsonl({"name": "a"}, {"name": "b"}))
    assert done.code is ExitCode.OK
    assert done.stdout == (
        b'{"index":0,"line":1,"status":"succeeded","error":null,"errors":[],'
        b'"steps":{"work":"succeeded"}}\n'
        b'{"index":1,"line":2,"status":"succeeded","error":null,"errors":[],'
        b'"steps":{"work":"succeeded"}}\n'
    )
    assert done.stderr.startswith("records: 2 (succeeded 2, failed 0, cancelled 0, invalid 0)\n")


def test_a_failed_record_exits_1(pipeline: Path) -> None:
    for workers in (1, 2):  # the fused loop, and run_many
        done = run(
            RunOptions(pipeline=pipeline, workers=workers, quiet=True),
            jsonl({"name": "a"}, {"name": "b", "fail": True}),
        )
        assert done.code is ExitCode.FAILED
        assert [line["status"] for line in done.lines] == ["succeeded", "failed"]
        assert done.lines[1]["error"]["message"] == "no b"
        assert done.stderr == ""


def test_a_closed_stdin_is_a_usage_error(pipeline: Path) -> None:
    done = run(RunOptions(pipeline=pipeline), None)
    assert done.code is ExitCode.USAGE
    assert done.stderr == "error: no input: standard input is closed; give --input FILE\n"
    assert done.stdout == b""


def test_a_stdout_closed_at_start_is_a_usage_error(pipeline: Path) -> None:
    streams = memory_streams(jsonl({"name": "a"}))
    streams.stdout_closed_at_start = True
    done = Run(execute(RunOptions(pipeline=pipeline), streams=streams), streams)
    assert done.code is ExitCode.USAGE
    assert done.stderr == (
        "error: cannot write stdout: standard output is closed; give --output FILE\n"
    )


def test_an_unknown_log_level_is_a_usage_error(pipeline: Path) -> None:
    done = run(RunOptions(pipeline=pipeline, log_level="loud"), b"")
    assert done.code is ExitCode.USAGE
    assert done.stderr.startswith("error: --log-level: unknown log level 'loud'")


def test_a_keyboard_interrupt_in_a_step_exits_130(pipeline: Path) -> None:
    done = run(
        RunOptions(pipeline=pipeline, quiet=True),
        jsonl({"name": "a", "interrupt": True}, {"name": "b"}),
    )
    assert done.code is ExitCode.INTERRUPTED


def test_sigterm_exits_143(pipeline: Path) -> None:
    done = run(
        RunOptions(pipeline=pipeline, quiet=True),
        jsonl({"name": "a"}, {"name": "b", "terminate": True}, {"name": "c"}),
    )
    assert done.code is ExitCode.TERMINATED
    assert [line["status"] for line in done.lines[:2]] == ["succeeded", "succeeded"]


def test_a_closed_pipe_on_stdout_exits_141_without_a_summary(pipeline: Path) -> None:
    done = run(RunOptions(pipeline=pipeline), jsonl({"name": "a"}), stdout=BrokenPipe())
    assert done.code is ExitCode.BROKEN_PIPE
    assert done.stderr == ""


def test_an_output_file_gets_the_lines_and_stdout_nothing(pipeline: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    done = run(RunOptions(pipeline=pipeline, output=str(output), quiet=True), jsonl({"name": "a"}))
    assert done.code is ExitCode.OK
    assert done.stdout == b""
    assert json.loads(output.read_bytes())["status"] == "succeeded"


def test_threads_the_system_will_not_start_are_a_usage_error_before_any_record(
    pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool starts its threads before the first record: a thread the system refuses
    (RuntimeError: can't start new thread) is exit 2 with a message, never a traceback."""
    import threading

    start = threading.Thread.start
    started = []

    def start_some(thread: threading.Thread) -> None:
        if thread.name.startswith("choreo-worker-") and len(started) >= 3:
            raise RuntimeError("can't start new thread")
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_some)
    summary = tmp_path / "summary.json"
    done = run(
        RunOptions(pipeline=pipeline, workers=8, summary_json=summary),
        jsonl({"name": "a"}),
    )
    assert done.code is ExitCode.USAGE
    assert done.stderr == (
        "error: cannot start 8 worker threads (can't start new thread): the system allows "
        "fewer threads; give fewer --workers\n"
    )
    assert done.stdout == b""
    assert json.loads(summary.read_text())["exit_code"] == 2


def test_another_runtime_error_at_start_is_not_taken_for_a_thread_start_failure(
    pipeline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from choreo_cli.executors.thread import ThreadExecutor

    def broken(self: Any, *, prebuild_workers: bool = False) -> Any:
        raise RuntimeError("a defect")

    monkeypatch.setattr(ThreadExecutor, "open", broken)
    with pytest.raises(RuntimeError, match="a defect"):
        run(RunOptions(pipeline=pipeline, workers=2), jsonl({"name": "a"}))
