"""`choreo run` halted early: the failure budget (halt:, --max-failures,
--max-consecutive-failures), --fail-fast's exit 3, and the file's max_workers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import CHOREO, choreo_env

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py

# A record fails while the file "down" exists and its id is at least "from" (in the record).
STEPS = """\
import os
import sqlite3
import time


def connect(path):
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("pragma synchronous = off")  # a test: no fsync per row
    db.execute("create table if not exists loaded (id integer)")
    yield db
    db.close()


def load(ctx, record):
    time.sleep(record.get("nap", 0))
    if os.path.exists("down") and record["id"] >= record.get("from", 0):
        raise ConnectionError("database is down")
    ctx.resources.db.execute("insert into loaded (id) values (?)", (record["id"],))
"""

PIPELINE = """\
version: 1
resources:
  db:
    factory: steps:connect
    with: {path: loaded.db}
    scope: worker
steps:
  - name: load
    job: steps:load
"""


def _records(path: Path, count: int, **fields: Any) -> None:
    path.write_text("".join(json.dumps({"id": i, **fields}) + "\n" for i in range(count)))


def _loaded(tmp_path: Path) -> list[int]:
    with sqlite3.connect(tmp_path / "loaded.db") as db:
        return [row[0] for row in db.execute("select id from loaded order by id")]


def test_consecutive_failures_halt_with_exit_3_a_line_and_the_summary(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(PIPELINE + "halt: {consecutive: 3}\n", STEPS)
    _records(tmp_path / "in.jsonl", 50, **{"from": 10})
    (tmp_path / "down").touch()
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--summary-json", "s.json", "-q"])
    assert run.code == 3
    why = "3 consecutive records failed (last: ConnectionError at line 13)"
    assert run.stderr == f"halted: {why}\n"  # said with -q too: one line
    assert run.statuses == ["succeeded"] * 10 + ["failed"] * 3
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["halted"] == {"reason": why, "line": 13}
    assert (summary["exit_code"], summary["records"]["total"]) == (3, 13)
    # --max-consecutive-failures overrides the file's.
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--max-consecutive-failures", "5"])
    assert (run.code, len(run.lines)) == (3, 15)
    assert "halted: 5 consecutive records failed (last: ConnectionError at line 15)\n" in run.stderr


def test_a_share_of_failures_counts_once_min_records_ended(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    # The file allows 10 failures; --max-failures 2% overrides it, min_records stays.
    write_pipeline(PIPELINE + "halt: {failures: 10, min_records: 50}\n", STEPS)
    # Records 0, 1 and 2 fail (3 of the first 3): not counted before 50 records ended,
    # then 3 of 50 is 6%, over 2%.
    lines = [{"id": i, "from": 0 if i < 3 else 1000} for i in range(200)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "down").touch()
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--max-failures", "2%"])
    assert run.code == 3, run.stderr
    assert len(run.lines) == 50
    assert (
        "halted: 3 of 50 records failed (6%), reaching the failure budget of 2% "
        "(last: ConnectionError at line 3)\n"
    ) in run.stderr
    assert _loaded(tmp_path) == list(range(3, 50))


def test_consecutive_counts_in_the_order_records_end_with_unordered_workers(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(PIPELINE, STEPS)
    # Every record from id 40 on fails; records take 0-20 ms, so they end out of order.
    records = [{"id": i, "from": 40, "nap": (i * 7 % 5) / 250} for i in range(400)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "down").touch()
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "--unordered", "-w", "4"]
    run = run_choreo([*args, "--max-consecutive-failures", "6", "--summary-json", "s.json"])
    assert run.code == 3, run.stderr
    halted = json.loads((tmp_path / "s.json").read_text())["halted"]
    # In the output (the order records ended), the 6th failure in a row is where it halted.
    statuses = run.statuses
    first = next(k for k in range(len(statuses)) if statuses[k : k + 6] == ["failed"] * 6)
    assert run.lines[first + 5]["line"] == halted["line"]
    assert halted["reason"].startswith("6 consecutive records failed (last: ConnectionError")
    # Records in flight finish; nothing else starts (the thread executor's queue is short).
    assert len(run.lines) < 40 + 6 + 20


@pytest.mark.parametrize(
    ("executor", "workers"), [("thread", "1"), ("process", "2"), ("dask", "2")]
)
def test_a_halted_checkpointed_run_resumes_and_every_record_lands_once(
    run_choreo: RunChoreo,
    write_pipeline: WritePipeline,
    tmp_path: Path,
    executor: str,
    workers: str,
) -> None:
    """The database goes down at record 40: the run halts, its input not read stays
    unmarked; once it is back, the same command takes the rest up, and the failed
    records (finished, in the checkpoint) are run again from their lines."""
    if executor == "dask":
        pytest.importorskip("distributed")
    write_pipeline(PIPELINE + "halt: {consecutive: 4}\n", STEPS)
    # Enough records after the halt that a loaded machine cannot have read them all.
    records = [{"id": i, "from": 40, "nap": 0.002} for i in range(400)]
    text = [json.dumps(r) + "\n" for r in records]
    (tmp_path / "in.jsonl").write_text("".join(text))
    (tmp_path / "down").touch()
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "--checkpoint", "run.ckpt", "-q"]
    args += ["--executor", executor, "-w", workers]
    first = run_choreo(args, timeout=120)
    assert first.code == 3, first.stderr
    assert first.stderr.startswith("halted: 4 consecutive records failed (last: ConnectionError")
    failed = [line["line"] for line in first.lines if line["status"] == "failed"]
    # Records in flight finished; records read but not started are cancelled (the batch
    # executors read ahead), the rest is not read.
    ran = [line for line in first.lines if line["status"] != "cancelled"]
    assert len(failed) >= 4 and len(ran) < 400
    (tmp_path / "down").unlink()  # the database is back
    # A checkpoint is the same for every executor: the rest is taken up by the thread
    # executor (a second cluster or pool of processes would only cost time here).
    args[args.index(executor)] = "thread"
    second = run_choreo(args, timeout=120)
    assert (second.code, second.stderr) == (0, "")
    # Only what the first run did not finish: the records not read, and those read but
    # not started (cancelled by the halt).
    done = {line["line"] for line in ran}
    assert {line["line"] for line in second.lines} == set(range(1, 401)) - done
    (tmp_path / "retry.jsonl").write_text("".join(text[line - 1] for line in failed))
    third = run_choreo(["run", "pipeline.yaml", "-i", "retry.jsonl", "-q"])
    assert third.code == 0, third.stderr
    assert _loaded(tmp_path) == list(range(400))  # every record, each exactly once


def test_fail_fast_exits_3_and_says_it_stopped(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(PIPELINE, STEPS)
    (tmp_path / "down").touch()
    run = run_choreo(["run", "pipeline.yaml", "--fail-fast"], input='{"id": 1}\n{"id": 2}\n')
    assert (run.code, run.statuses) == (3, ["failed"])
    assert run.stderr.startswith(
        "halted: --fail-fast: the record at line 1 failed (ConnectionError)\n"
    )


def test_workers_above_max_workers_are_refused_at_the_files_line(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline("version: 1\nname: one writer\nmax_workers: 1\n" + PIPELINE[11:], STEPS)
    run = run_choreo(["run", "pipeline.yaml", "--workers", "64", "--summary-json", "s.json"])
    assert run.code == 2
    message = (
        "pipeline.yaml:3:14: --workers 64 is more than this pipeline's max_workers: 1 — give "
        "--workers 1 or fewer (the file allows no more records at once; raise max_workers "
        "there if what it writes to takes more)"
    )
    assert run.stderr == f"error: {message}\n"
    assert json.loads((tmp_path / "s.json").read_text())["error"] == message
    assert not (tmp_path / "loaded.db").exists()


def test_bad_halt_and_max_workers_values_are_positioned_problems(
    write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(
        """\
        version: 1
        workers: 4
        max_workers: 2
        halt:
          failures: 150%
          min_records: -1
          consecutive: 0
          consecutve: 3
        steps:
          - name: load
            job: steps:load
        """,
        STEPS,
    )
    write_pipeline(
        """\
        version: 1
        max_workers: 0
        halt: {failures: 2 percent}
        steps: [{name: load, job: steps:load}]
        """,
        name="other.yaml",
    )
    run = subprocess.run(
        [CHOREO, "validate", "--no-import", "pipeline.yaml", "other.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=choreo_env(),
        check=False,
    )
    assert run.returncode == 1
    assert run.stdout.splitlines() == [
        "pipeline.yaml:2:10: workers: 4 is more than max_workers: 2 (line 3) — give workers: 2 "
        "or fewer",
        "pipeline.yaml:5:13: 'failures': '150%' is not a percentage above 0% and at most 100%",
        "pipeline.yaml:6:16: 'min_records' must be at least 0, not -1",
        "pipeline.yaml:7:16: 'consecutive' must be at least 1, not 0",
        "pipeline.yaml:8:3: unknown key 'consecutve' — did you mean 'consecutive'?",
        "other.yaml:2:14: 'max_workers' must be at least 1, not 0",
        "other.yaml:3:18: 'failures' must be a number of records (at least 1) or a percentage "
        "like '2%', not '2 percent'",
    ]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-failures", "0%", "--max-failures: '0%' is not a percentage above 0% and at"),
        ("--max-failures", "ten", "--max-failures: 'ten' is not a number of records (at least"),
        (
            "--max-consecutive-failures",
            "0",
            "--max-consecutive-failures must be a whole number "
            "of at least 1, not '0' — see choreo run --help",
        ),
    ],
)
def test_bad_budget_options_are_usage_errors(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, option: str, value: str, message: str
) -> None:
    write_pipeline(PIPELINE, STEPS)
    run = run_choreo(["run", "pipeline.yaml", option, value], input="")
    assert run.code == 2
    assert run.stderr.startswith(f"error: {message}")
