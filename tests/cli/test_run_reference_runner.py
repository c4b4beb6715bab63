"""`choreo run` with ``CHOREO_RUNNER=interpreted``: the reference runner writes the same bytes.

The environment variable rules the generated code out (see choreo_cli.core.interpreted):
with one worker it replaces the fused line loop of `choreo run`, with more the record
runner of the thread pool. Either way the output and the exit code must not change.
"""

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
  - name: Exists
    precheck: steps:exists
    job: steps:create
  - name: flaky
    job: steps:flaky
    retry: {attempts: 2, on: [ConnectionError]}
  - name: notify
    precheck: steps:wanted
    job: steps:notify
"""

STEPS = """\
import os
import sys

from choreo_cli import Cancel, Skip

tries = {}


def probe():
    # Which code runs the records: the generated runners, or the reference loop.
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_filename.startswith("<choreo generated "):
            kind = "generated"
            break
        frame = frame.f_back
    else:
        kind = "interpreted"
    with open(os.environ["PROBE_FILE"], "a") as file:
        file.write(kind + "\\n")


def exists(ctx, record):
    probe()
    if record.get("exists"):
        raise Skip("already there", data={"id": record["id"]})
    if record.get("lookup"):
        raise LookupError("no index")


def create(ctx, record):
    if record.get("fail"):
        raise ValueError(f"bad record {record['id']}")
    if record.get("cancel"):
        raise Cancel("cancelled on purpose")
    return record["id"] * 2


def flaky(ctx, record):
    tries[record["id"]] = tries.get(record["id"], 0) + 1
    if record.get("flaky") and tries[record["id"]] == 1:
        raise ConnectionError("try again")


async def wanted(ctx, record):
    if record.get("quiet"):
        raise Skip("not wanted")


async def notify(ctx, record):
    return {"sent": record["id"]}
"""


def records() -> bytes:
    lines = []
    for i in range(60):
        marks = ""
        for name, every, at in [
            ("exists", 5, 1),
            ("lookup", 11, 2),
            ("fail", 9, 4),
            ("cancel", 13, 6),
            ("flaky", 7, 3),
            ("quiet", 4, 0),
        ]:
            if i % every == at:
                marks += f', "{name}": true'
        lines.append(f'{{"id": {i}{marks}}}')
        if i % 17 == 8:
            lines.append("{not json")
        if i % 19 == 10:
            lines.append("")
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_reference_runner_writes_the_same_bytes_and_exit_code(
    run_choreo: RunChoreo,
    write_pipeline: WritePipeline,
    tmp_path: Path,
    workers: str,
    dry_run: bool,
) -> None:
    pipeline = write_pipeline(PIPELINE, STEPS)
    (tmp_path / "in.jsonl").write_bytes(records())
    args = ["run", pipeline, "-i", "in.jsonl", "--executor", "thread", "-w", workers]
    args += ["--dry-run"] if dry_run else []
    runs = {}
    for runner in ("compiled", "interpreted"):
        probe = tmp_path / f"probe-{runner}"
        runs[runner] = run_choreo(args, env={"CHOREO_RUNNER": runner, "PROBE_FILE": str(probe)})
        assert set(probe.read_text().split()) == {
            "generated" if runner == "compiled" else "interpreted"
        }
    compiled, interpreted = runs["compiled"], runs["interpreted"]
    assert compiled.code == 1  # failed, cancelled and invalid records
    assert interpreted.code == compiled.code
    assert interpreted.stdout == compiled.stdout
    statuses = set(compiled.statuses)
    if dry_run:
        assert statuses == {"succeeded", "invalid"}
    else:
        assert statuses == {"succeeded", "failed", "cancelled", "invalid"}
    assert len(compiled.lines) == 60 + 4  # every record and each line that is not JSON
    if not dry_run:
        assert any(line.get("attempts") for line in compiled.lines)


def test_without_the_variable_the_generated_code_runs(
    run_choreo: RunChoreo,
    write_pipeline: WritePipeline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHOREO_RUNNER", raising=False)
    pipeline = write_pipeline(PIPELINE, STEPS)
    probe = tmp_path / "probe"
    run = run_choreo(["run", pipeline], input=b'{"id": 1}\n', env={"PROBE_FILE": str(probe)})
    assert run.code == 0
    assert probe.read_text() == "generated\n"
