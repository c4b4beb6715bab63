"""`ctx.log` lines of steps run in worker processes reach choreo's stderr as with threads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py

PIPELINE = """\
version: 1
steps:
  - name: talk
    job: steps:talk
"""

STEPS = """\
import threading


class Opaque:
    def __reduce__(self):
        raise TypeError("no pickling")

    def __repr__(self):
        return "<opaque>"


def talk(ctx, record):
    ctx.log.info("info about %s", record["id"])
    ctx.log.warning("warning about %s", record["id"], extra={"thing": Opaque()})
    if record["id"] == 2:
        ctx.log.error("failed on %s", record["id"])
        side = threading.Thread(target=ctx.log.error, args=("from a thread",))
        side.start()
        side.join()
    return 1
"""

INPUT = "".join(f'{{"id": {i}}}\n' for i in range(4))


def log_lines(stderr: str) -> list[str]:
    """The log lines of stderr (not the summary), sorted: workers interleave them."""
    levels = ("DEBUG ", "INFO ", "WARNING ", "ERROR ", "CRITICAL ")
    return sorted(line for line in stderr.splitlines() if line.startswith(levels))


@pytest.fixture
def pipeline(write_pipeline: WritePipeline) -> Path:
    return write_pipeline(PIPELINE, STEPS)


def expected(level: str) -> list[str]:
    lines = []
    for i in range(4):
        where = f"(record {i}, line {i + 1})"
        if level == "info":
            lines.append(f"INFO choreo.step.talk: info about {i} {where}")
        lines.append(f"WARNING choreo.step.talk: warning about {i} {where}")
    lines.append("ERROR choreo.step.talk: failed on 2 (record 2, line 3)")
    lines.append("ERROR choreo.step.talk: from a thread")
    return sorted(lines)


@pytest.mark.parametrize("executor", ["process", "dask"])
def test_worker_processes_log_like_threads(
    run_choreo: RunChoreo, pipeline: Path, executor: str
) -> None:
    args = ["run", pipeline, "--log-level", "info"]
    thread = run_choreo(args, input=INPUT)
    workers = run_choreo([*args, "--executor", executor, "-w", "2"], input=INPUT, timeout=90)
    assert (thread.code, workers.code) == (0, 0)
    assert log_lines(thread.stderr) == expected("info")
    assert log_lines(workers.stderr) == expected("info")


def test_workers_send_nothing_below_the_log_level(run_choreo: RunChoreo, pipeline: Path) -> None:
    run = run_choreo(["run", "--executor", "process", "-w", "2", pipeline], input=INPUT)
    assert run.code == 0
    assert log_lines(run.stderr) == expected("warning")
    quiet = run_choreo(
        ["run", "--executor", "process", "-w", "2", "--log-level", "error", pipeline], input=INPUT
    )
    assert log_lines(quiet.stderr) == [
        "ERROR choreo.step.talk: failed on 2 (record 2, line 3)",
        "ERROR choreo.step.talk: from a thread",
    ]
