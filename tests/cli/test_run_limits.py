"""`limits:` on `choreo run` and `choreo validate` (design §9): rates and concurrency held
under the thread and process executors, an interruption during a wait, `--limit`, and
positioned validation problems."""

from __future__ import annotations

import bisect
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli.conftest import (
    CHOREO,
    RunChoreo,
    StartChoreo,
    WritePipeline,
    choreo_env,
    parse_result_lines,
)

STEPS = """
import time


def stamped(ctx, record):
    started = time.time()
    time.sleep(record.get("sleep", 0))
    return [started, time.time()]
"""

RATE = """
version: 1
limits:
  api: {rate: 20/s, burst: 2}
steps:
  - name: call
    job: steps:stamped
    limit: api
"""

CONCURRENCY = """
version: 1
limits:
  db: {concurrency: 2}
steps:
  - name: write
    job: {call: steps:stamped, limit: db}
"""

SLOW = """
version: 1
limits:
  slow: {rate: 1/min}
steps:
  - name: push
    precheck: {call: steps:stamped, limit: [slow]}
    job: steps:stamped
"""

EXECUTORS = [["--executor", "thread", "-w", "8"], ["--executor", "process", "-w", "2"]]


def _records(path: Path, count: int, **fields: object) -> Path:
    path.write_text("".join(json.dumps({"n": i, **fields}) + "\n" for i in range(count)))
    return path


def _spans(lines: list[dict[str, object]], step: str) -> list[list[float]]:
    spans = []
    for line in lines:
        data = line["data"]
        assert isinstance(data, dict)
        spans.append(data["job"][step])
    return spans


@pytest.mark.parametrize("executor", EXECUTORS, ids=["thread", "process"])
def test_a_rate_limit_holds_across_workers(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path, executor: list[str]
) -> None:
    write_pipeline(RATE, STEPS)
    # Fewer records through processes: their batches need not split evenly.
    count = 30 if "thread" in executor else 16
    records = _records(tmp_path / "in.jsonl", count)
    summary = tmp_path / "summary.json"
    run = run_choreo(
        [
            "run",
            "pipeline.yaml",
            "-i",
            records,
            "--include-data",
            "--summary-json",
            summary,
            *executor,
        ]
    )
    assert run.code == 0, run.stderr
    starts = sorted(span[0] for span in _spans(run.lines, "call"))
    # 2 at once, then 20/s: 30 calls take at least 1.4 s (16: 0.7 s); no second holds
    # more than 22.
    assert starts[-1] - starts[0] >= (count - 2) / 20 - 0.1
    busiest = max(bisect.bisect_left(starts, s + 1.0) - i for i, s in enumerate(starts))
    assert busiest <= 23
    figures = json.loads(summary.read_text())["limits"]["api"]
    assert figures["waits"] >= count - 4 and figures["wait_seconds"] > 0
    workers = 2 if "process" in executor else 1
    assert (figures["workers"], figures["share"]) == (workers, "10/s" if workers == 2 else "20/s")
    assert "limit api: " in run.stderr


@pytest.mark.parametrize("executor", EXECUTORS, ids=["thread", "process"])
def test_a_concurrency_limit_holds_across_workers(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path, executor: list[str]
) -> None:
    write_pipeline(CONCURRENCY, STEPS)
    records = _records(tmp_path / "in.jsonl", 24, sleep=0.02)
    run = run_choreo(["run", "pipeline.yaml", "-i", records, "--include-data", *executor])
    assert run.code == 0, run.stderr
    spans = _spans(run.lines, "write")
    # At any call's start, how many calls (across processes too) were inside.
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most <= 2


@pytest.mark.parametrize("executor", EXECUTORS, ids=["thread", "process"])
def test_an_interruption_during_a_limit_wait_cancels_at_once(
    write_pipeline: WritePipeline, start_choreo: StartChoreo, tmp_path: Path, executor: list[str]
) -> None:
    write_pipeline(SLOW, STEPS)
    records = _records(tmp_path / "in.jsonl", 6)
    process = start_choreo(["run", "pipeline.yaml", "-i", records, *executor])
    assert process.stdout is not None
    first = process.stdout.readline()  # a call passed; the others wait a minute each
    assert json.loads(first)["status"] == "succeeded"
    time.sleep(0.3)
    began = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("choreo went on waiting for the limit after SIGINT")
    assert time.monotonic() - began < 5
    assert process.stderr is not None
    out, err = process.stdout.read(), process.stderr.read()
    assert process.returncode == 130, err.decode()
    lines = parse_result_lines(first + out)
    assert len(lines) == 6
    waited = [line for line in lines if line["status"] == "cancelled"]
    messages = {line["error"]["message"] for line in waited}
    assert "interrupted while waiting for limit 'slow'" in messages
    assert messages <= {
        "interrupted while waiting for limit 'slow'",
        "interrupted before step 'push'",
    }
    for line in waited:
        assert line["error"]["type"] == "Interrupted" and line["errors"] == []


def test_limit_overrides_a_rate_for_one_run(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    write_pipeline(SLOW, STEPS)
    records = _records(tmp_path / "in.jsonl", 10)
    summary = tmp_path / "summary.json"
    began = time.monotonic()
    run = run_choreo(
        [
            "run",
            "pipeline.yaml",
            "-i",
            records,
            "-w",
            "4",
            "--limit",
            "slow=200/s",
            "--summary-json",
            summary,
        ]
    )
    assert run.code == 0, run.stderr
    assert time.monotonic() - began < 15  # at 1/min, ten calls would take 9 minutes
    assert json.loads(summary.read_text())["limits"]["slow"]["share"] == "200/s"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "slo=5/s",
            "--limit slo: pipeline.yaml has no limit named 'slo' — did you mean 'slow'? "
            "(limits: slow)",
        ),
        ("slow=5/day", "--limit slow: '5/day' is not a rate — write N/s, N/min or N/h, e.g. 20/s"),
        ("slow=0/s", "--limit slow: rate '0/s' must be more than 0 calls, e.g. 20/s"),
        ("slow", "--limit needs NAME=RATE (e.g. crm_api=10/s), got 'slow'"),
    ],
)
def test_a_bad_limit_option_is_a_usage_error(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, option: str, message: str
) -> None:
    write_pipeline(SLOW, STEPS)
    run = run_choreo(["run", "pipeline.yaml", "--limit", option], input='{"n": 1}\n')
    assert run.code == 2
    assert message in run.stderr
    assert run.lines == []


def _validate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHOREO), "validate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=choreo_env(),
        timeout=30,
        check=False,
    )


def test_validate_positions_each_limit_problem(
    write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(
        """\
        version: 1
        workers: 8
        limits:
          crm_api: {rate: 20/s, burst: 8}
          warehouse: {concurrency: 4}
          daily: {rate: 20/day}
          zero: {rate: 0/s}
          negative: {concurrency: -1}
          both: {rate: 5/s, concurrency: 2}
          typo: {rate: 5/s, burts: 8}
        steps:
          - name: push
            job: steps:stamped
            limit: crm_apj
          - name: lookup
            precheck: {call: steps:stamped, limit: [crm_api, nope]}
            job: steps:stamped
            limit: warehouse
        """,
        STEPS,
    )
    done = _validate(tmp_path, "pipeline.yaml")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "pipeline.yaml:5:14: warning: limit 'warehouse': concurrency 4 shared by 8 workers is "
        "below 1 each; each worker gets 1, so up to 8 calls may run at once — with the "
        "process or dask executor, use at most 4 workers",
        "pipeline.yaml:6:17: limit 'daily': '20/day' is not a rate — write N/s, N/min or N/h, "
        "e.g. 20/s",
        "pipeline.yaml:7:16: limit 'zero': rate '0/s' must be more than 0 calls, e.g. 20/s",
        "pipeline.yaml:8:27: 'concurrency' must be at least 1, not -1",
        "pipeline.yaml:9:9: limit 'both' has concurrency and other keys: a limit is either a "
        "token bucket {rate, burst} or a concurrency limit {concurrency} — split it into two "
        "limits",
        "pipeline.yaml:10:9: warning: limit 'typo': burst 1 shared by 8 workers is below 1 "
        "each; each worker gets 1, so up to 8 calls may start at once — with the process or "
        "dask executor, give burst: 8 or use fewer workers",
        "pipeline.yaml:10:21: unknown key 'burts' — did you mean 'burst'?",
        "pipeline.yaml:14:12: unknown limit 'crm_apj' — did you mean 'crm_api'?",
        "pipeline.yaml:16:54: unknown limit 'nope' — limits defined: crm_api, typo, warehouse",
    ]


def test_a_limit_without_limits_says_where_to_define_it(
    write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(
        """\
        version: 1
        steps:
          - {name: push, job: steps:stamped, limit: crm_api}
        """,
        STEPS,
    )
    done = _validate(tmp_path, "--no-import", "pipeline.yaml")
    assert done.returncode == 1
    assert done.stdout == (
        "pipeline.yaml:3:45: unknown limit 'crm_api' — define it under 'limits:' at the top "
        "of the file, e.g. limits: {crm_api: {rate: 20/s, burst: 5}}\n"
    )
