"""`choreo run` keeps integers of any size exact: in what steps receive, in --include-input
(the record as it was read) and in --include-data, on every executor."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py

PIPELINE = """\
version: 1
steps:
  - name: exact
    job: steps:exact
  - name: twice
    job: steps:twice
"""

STEPS = """\
def exact(ctx, record):
    if isinstance(record, dict):
        assert type(record["id"]) is int and record["id"] == 12345678901234567890123, record
        assert type(record["n"]) is int and record["n"] == -98765432109876543210, record
    return 2**70


def twice(ctx, record: int | dict):
    return record * 2 if type(record) is int else None
"""

BIG = b'{"id": 12345678901234567890123, "n": -98765432109876543210}'
INPUT = b"\n".join([BIG, b"1180591620717411303424", b'{"id":1}', BIG]) + b"\n"
EXECUTORS = [
    ["-w", "1"],
    ["-w", "2"],
    ["--executor", "process", "-w", "2"],
    ["--executor", "dask", "-w", "2"],
]


@pytest.fixture
def pipeline(write_pipeline: WritePipeline) -> Path:
    return write_pipeline(PIPELINE, STEPS)


@pytest.mark.parametrize("executor", EXECUTORS, ids=" ".join)
@pytest.mark.parametrize("include", [[], ["--include-input", "--include-data"]], ids=len)
def test_integers_past_64_bits_reach_steps_and_results_exactly(
    run_choreo: RunChoreo, pipeline: Path, executor: list[str], include: list[str]
) -> None:
    run = run_choreo(["run", pipeline, "-q", *executor, *include], input=INPUT, timeout=90)
    # The first record's ids reach the step exactly (it asserts them, so the third
    # record fails); the second is an int past 64 bits, which ``int`` accepts.
    assert run.statuses == ["succeeded", "succeeded", "failed", "succeeded"], run.stdout
    assert run.code == 1
    assert run.lines[2]["error"]["type"] == "AssertionError"
    if not include:
        return
    first, second = run.lines[0], run.lines[1]
    assert first["input"] == json.loads(BIG)
    assert second["input"] == 2**70
    # Written exactly: the record as it was read, its line's own text.
    line = run.stdout.split(b"\n")[0]
    assert b',"input":' + BIG + b',"data":' in line
    assert first["data"]["job"] == {"exact": 2**70}
    assert second["data"]["job"] == {"exact": 2**70, "twice": 2**71}
    assert b'"job":{"exact":1180591620717411303424,"twice":2361183241434822606848}' in run.stdout
    # An ordinary record keeps its bytes: written by orjson, as before.
    assert b'"input":{"id":1}' in run.stdout


@pytest.mark.parametrize("executor", EXECUTORS, ids=" ".join)
def test_a_line_orjson_refuses_stays_invalid(
    run_choreo: RunChoreo, pipeline: Path, executor: list[str]
) -> None:
    data = b"[12345678901234567890123, NaN]\n[" + b"9" * 400 + b", 1e400]\n" + BIG + b"\n"
    run = run_choreo(["run", pipeline, "-q", *executor], input=data, timeout=90)
    assert run.statuses == ["invalid", "invalid", "succeeded"]
