"""The files of `choreo run`: a checkpoint that never marks an unfinished last line
(README "Re-running safely")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import RunChoreo, WritePipeline

PIPELINE = """\
version: 1
steps:
  - name: echo
    job: steps:echo
"""

STEPS = """\
def echo(ctx, record):
    return record
"""

DATA = b'{"id": 1}\n{"id": 2}\n'


@pytest.fixture
def echo(write_pipeline: WritePipeline, tmp_path: Path) -> Path:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    return write_pipeline(PIPELINE, STEPS)


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
