"""`timeout:` through the real command: a call that does not come back by its deadline,
sync or ``async def`` (blocking its loop, or never awaiting), fails its record then; the
later records run, in order, and the run ends (core/watchdog.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py
StartChoreo = Callable[..., "subprocess.Popen[bytes]"]  # conftest.py's start_choreo
ParseResults = Callable[[bytes], list[dict[str, Any]]]  # conftest.py's parse_results

STEPS = """\
    import asyncio
    import time


    def stuck(ctx, record):
        if record.get("stuck"):
            while True:  # never returns (the process ends with the run)
                time.sleep(1)
        return record["id"]


    async def spins(ctx, record):
        if record.get("stuck"):
            while True:  # never awaits: its loop never comes back
                pass
        await asyncio.sleep(0)
        return record["id"]


    async def blocks(ctx, record):
        if record.get("stuck"):
            time.sleep(3)  # a blocking call in an async def
        await asyncio.sleep(0)
        return record["id"]


    def after(ctx, record):
        return ctx.bag.job("a") * 10
    """


def _pipeline(job: str, timeout: float) -> str:
    return f"""\
        version: 1
        steps:
          - name: a
            job: steps:{job}
            timeout: {timeout}
          - name: b
            job: steps:after
        """


def _records(count: int, stuck: set[int]) -> str:
    return "".join(
        json.dumps({"id": n, **({"stuck": True} if n in stuck else {})}) + "\n"
        for n in range(count)
    )


@pytest.mark.parametrize(
    ("job", "options"),
    [
        ("stuck", ["-w", "1"]),
        ("stuck", ["-w", "4"]),
        ("spins", ["-w", "1"]),
        ("spins", ["-w", "4"]),
        ("blocks", ["-w", "1"]),
        ("stuck", ["-w", "1", "--checkpoint", "checkpoint.json"]),
        ("spins", ["--executor", "process", "-w", "2"]),
        ("stuck", ["--executor", "dask", "-w", "2"]),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_a_call_that_does_not_come_back_fails_its_record_at_the_deadline(
    write_pipeline: WritePipeline,
    run_choreo: RunChoreo,
    tmp_path: Path,
    job: str,
    options: list[str],
) -> None:
    write_pipeline(_pipeline(job, 0.5), STEPS)
    (tmp_path / "in.jsonl").write_text(_records(8, {2, 5}), encoding="utf-8")
    started = time.monotonic()
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", *options], timeout=60)
    elapsed = time.monotonic() - started
    assert run.code == 1, run.stderr
    assert run.indices == list(range(8))
    assert run.statuses == ["failed" if n in (2, 5) else "succeeded" for n in range(8)]
    for n in (2, 5):
        assert run.lines[n]["steps"] == {"a": "failed", "b": "not_run"}
        assert run.lines[n]["error"] == {
            "step": "a",
            "phase": "job",
            "type": "StepTimeout",
            "message": f"steps:{job} ran past the step's timeout of 0.5 s",
        }
    # The records before and after ran every step.
    assert run.lines[3]["steps"] == {"a": "succeeded", "b": "succeeded"}
    assert elapsed < 30, elapsed


def test_sigterm_ends_a_run_whose_async_call_never_awaits(
    write_pipeline: WritePipeline,
    start_choreo: StartChoreo,
    parse_results: ParseResults,
    tmp_path: Path,
) -> None:
    write_pipeline(_pipeline("spins", 2), STEPS)
    (tmp_path / "in.jsonl").write_text(_records(4, {1}), encoding="utf-8")
    process = start_choreo(["run", "pipeline.yaml", "-i", "in.jsonl"])
    time.sleep(1)  # record 1 spins by now
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=20)
    elapsed = time.monotonic() - started
    # The stuck record fails at its deadline, then the interrupted run ends as usual.
    assert process.returncode == 143, stderr
    assert elapsed < 5, elapsed
    lines = parse_results(stdout)
    assert [line["status"] for line in lines][:2] == ["succeeded", "failed"]
    assert lines[1]["error"]["type"] == "StepTimeout"
    assert b"Traceback" not in stderr
