"""The --checkpoint file (choreo_cli.jsonl.checkpoint): fingerprint, marks, lines cut short by a crash."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from choreo_cli.core.result import ExecutionError
from choreo_cli.errors import Interrupted
from choreo_cli.jsonl.checkpoint import MAGIC, PREFIX_BYTES, Checkpoint, CheckpointError


@pytest.fixture
def files(tmp_path: Path) -> SimpleNamespace:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("version: 1\nsteps: []\n", encoding="utf-8")
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(1, 11)))
    return SimpleNamespace(pipeline=pipeline, input=source, path=tmp_path / "run.ckpt")


def _open(files: SimpleNamespace) -> Checkpoint:
    return Checkpoint.open(files.path, pipeline=files.pipeline, input_path=files.input)


def _result(line: int, *, interrupted: bool = False) -> Any:
    error = ExecutionError("one", None, Interrupted("interrupted before step 'one'"))
    return SimpleNamespace(line=line, error=error if interrupted else None)


def _finished(files: SimpleNamespace, last: int = 12) -> list[int]:
    """The lines a rerun would skip (the checkpoint opened and closed again)."""
    checkpoint = _open(files)
    try:
        return [n for n in range(1, last + 1) if checkpoint.is_finished(n)]
    finally:
        checkpoint.close()


def test_a_new_checkpoint_is_a_header_line_only(files: SimpleNamespace) -> None:
    checkpoint = _open(files)
    checkpoint.close()
    data = files.path.read_bytes()
    assert data.startswith(MAGIC.encode() + b" pipeline=")
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    assert f" input={files.input.stat().st_size}:".encode() in data


def test_marks_are_read_back_as_finished_lines(files: SimpleNamespace) -> None:
    checkpoint = _open(files)
    checkpoint.mark([_result(1), _result(2), _result(3), _result(7)])
    checkpoint.mark([_result(5)])
    checkpoint.close()
    assert files.path.read_bytes().split(b"\n")[1:] == [b"1-3 7", b"5", b""]
    assert _finished(files) == [1, 2, 3, 5, 7]


def test_interrupted_results_and_results_without_a_line_are_not_marked(
    files: SimpleNamespace,
) -> None:
    checkpoint = _open(files)
    checkpoint.mark([_result(1), _result(2, interrupted=True), SimpleNamespace(line=None)])
    checkpoint.mark([_result(4, interrupted=True)])
    checkpoint.close()
    assert _finished(files) == [1]
    assert files.path.read_bytes().count(b"\n") == 2  # header, "1": no empty mark line


def test_an_unfinished_last_line_is_never_marked(files: SimpleNamespace) -> None:
    """The input's last line has no line ending (yet): a rerun must read it again."""
    checkpoint = _open(files)
    checkpoint.mark([_result(1), _result(2)])
    checkpoint.keep_unfinished(4)
    checkpoint.mark([_result(3), _result(4)])
    checkpoint.mark([_result(4)])
    checkpoint.close()
    assert _finished(files) == [1, 2, 3]
    assert files.path.read_bytes().split(b"\n")[1:] == [b"1-2", b"3", b""]


def test_discard_removes_only_a_checkpoint_this_run_made(files: SimpleNamespace) -> None:
    checkpoint = _open(files)
    assert checkpoint.created
    checkpoint.discard()
    checkpoint.close()
    assert not files.path.exists()
    _open(files).close()
    checkpoint = _open(files)
    assert not checkpoint.created
    checkpoint.discard()
    checkpoint.close()
    assert files.path.read_bytes().startswith(MAGIC.encode())


def test_each_mark_reaches_the_file_at_once(files: SimpleNamespace) -> None:
    # Unbuffered: a kill -9 right after mark() returns loses nothing that was marked.
    checkpoint = _open(files)
    checkpoint.mark([_result(3)])
    assert files.path.read_bytes().endswith(b"\n3\n")
    checkpoint.close()


def test_unordered_marks_merge(files: SimpleNamespace) -> None:
    checkpoint = _open(files)
    for line in (4, 2, 9, 3, 1, 10):
        checkpoint.mark([_result(line)])
    checkpoint.close()
    assert _finished(files) == [1, 2, 3, 4, 9, 10]


def test_skip_finished_counts_what_it_leaves_out(files: SimpleNamespace) -> None:
    checkpoint = _open(files)
    checkpoint.mark([_result(n) for n in (1, 2, 5)])
    checkpoint.close()
    skipped: list[None] = []
    items = [SimpleNamespace(line=n) for n in range(1, 8)]
    checkpoint = _open(files)
    left = list(checkpoint.skip_finished(items, lambda: skipped.append(None)))
    checkpoint.close()
    assert [item.line for item in left] == [3, 4, 6, 7]
    assert len(skipped) == 3


# -- fingerprint --------------------------------------------------------------------------


def test_another_pipeline_is_refused(files: SimpleNamespace) -> None:
    _open(files).close()
    files.pipeline.write_text("version: 1\nsteps: []\n# changed\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="another version of the pipeline file"):
        _open(files)


def test_other_input_data_is_refused(files: SimpleNamespace) -> None:
    _open(files).close()
    files.input.write_bytes(files.input.read_bytes().replace(b'{"n": 5}', b'{"n": 6}'))
    with pytest.raises(CheckpointError, match=r"other input data \(its first 91 bytes differ\)"):
        _open(files)


def test_an_input_cut_shorter_is_refused(files: SimpleNamespace) -> None:
    _open(files).close()
    files.input.write_bytes(files.input.read_bytes()[:-9])
    with pytest.raises(CheckpointError, match="other input data"):
        _open(files)


def test_an_input_that_only_grew_at_its_end_resumes(files: SimpleNamespace) -> None:
    checkpoint = _open(files)
    checkpoint.mark([_result(n) for n in range(1, 11)])
    checkpoint.close()
    with open(files.input, "ab") as f:
        f.write(b'{"n": 11}\n' * 10_000)  # now far past 64 KiB
    assert _finished(files, 11) == list(range(1, 11))


def test_only_the_first_64_kib_are_fingerprinted(files: SimpleNamespace) -> None:
    files.input.write_bytes(b"1\n" * PREFIX_BYTES)
    _open(files).close()
    assert f" input={PREFIX_BYTES}:".encode() in files.path.read_bytes()
    data = bytearray(files.input.read_bytes())
    data[PREFIX_BYTES + 10] = ord("2")  # past the prefix: not checked
    files.input.write_bytes(bytes(data))
    _open(files).close()
    data[PREFIX_BYTES - 2] = ord("2")  # inside it: refused
    files.input.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="other input data"):
        _open(files)


def test_a_file_that_is_no_checkpoint_is_refused_untouched(files: SimpleNamespace) -> None:
    files.path.write_bytes(b"precious data\nmore\n")
    with pytest.raises(CheckpointError, match="is not a choreo checkpoint"):
        _open(files)
    assert files.path.read_bytes() == b"precious data\nmore\n"


def test_an_empty_file_starts_a_new_checkpoint(files: SimpleNamespace) -> None:
    files.path.write_bytes(b"")
    _open(files).close()
    assert files.path.read_bytes().startswith(MAGIC.encode())


def test_a_pipe_as_input_is_refused(files: SimpleNamespace, tmp_path: Path) -> None:
    # Reading a FIFO's first bytes for the fingerprint would take them from the run.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="is not a regular file"):
        Checkpoint.open(files.path, pipeline=files.pipeline, input_path=fifo)
    assert not files.path.exists()


# -- lines cut short by a crash -----------------------------------------------------------


def _with_tail(files: SimpleNamespace, marked: list[int], tail: bytes) -> bytes:
    checkpoint = _open(files)
    if marked:
        checkpoint.mark([_result(n) for n in marked])
    checkpoint.close()
    with open(files.path, "ab") as f:
        f.write(tail)
    return files.path.read_bytes()


@pytest.mark.parametrize("tail", [b"9", b"4-", b"4-1", b"\xff", b"4 9-1"])
def test_a_last_line_cut_short_is_ignored(files: SimpleNamespace, tail: bytes) -> None:
    _with_tail(files, [1, 2], tail)
    assert _finished(files) == [1, 2]


@pytest.mark.parametrize("tail", [b"9", b"4-", b"4-1"])
def test_a_line_cut_short_is_dropped_not_completed(files: SimpleNamespace, tail: bytes) -> None:
    # "9" may be what is left of "90": were it ended with a newline, a later run would
    # take line 9 as finished without ever running it (or find "4-" a damaged line).
    _with_tail(files, [1, 2], tail)
    checkpoint = _open(files)
    checkpoint.mark([_result(3)])
    checkpoint.close()
    assert _finished(files) == [1, 2, 3]
    assert files.path.read_bytes().split(b"\n")[1:] == [b"1-2", b"3", b""]


def test_a_header_cut_short_starts_over(files: SimpleNamespace) -> None:
    files.path.write_bytes(MAGIC.encode()[:7])
    _open(files).close()
    assert files.path.read_bytes().startswith(MAGIC.encode() + b" pipeline=")
    files.path.write_bytes(_open_header(files)[:-20])
    assert _finished(files) == []


def _open_header(files: SimpleNamespace) -> bytes:
    files.path.unlink()
    _open(files).close()
    return files.path.read_bytes().rstrip(b"\n")


def test_a_damaged_line_before_the_last_is_an_error(files: SimpleNamespace) -> None:
    _with_tail(files, [1], b"x-y\n2\n")
    with pytest.raises(CheckpointError, match=r"run\.ckpt:3: damaged checkpoint line"):
        _open(files)
