"""Batches that come back in any order and in any pieces: still one line per item, in order.

The process and Dask executors share BatchExecutor's stream: it reads the input, sends
batches, and hands results on as they arrive. Here the batches run in this process and
a hypothesis draw decides which batch in flight answers next and with how many pieces,
so the stream meets completion orders that real workers rarely produce.
"""

from __future__ import annotations

import collections
import io
import pickle
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from choreo_cli import load_pipeline
from choreo_cli.core.result import Result
from choreo_cli.executors import runner as runner_module
from choreo_cli.executors.batching import Batch, BatchExecutor
from choreo_cli.executors.portable import Chunk
from choreo_cli.executors.runner import BatchRunner
from choreo_cli.jsonl.reader import JsonlReader
from choreo_cli.jsonl.writer import ResultWriter

STEPS = """
    from choreo_cli import Skip


    def exists(ctx, record):
        if isinstance(record, int) and record % 3 == 0:
            raise Skip("exists", data=record)


    def work(ctx, record):
        if isinstance(record, int) and record % 5 == 0:
            raise ValueError(f"bad record {record}")
        return record
"""

PIPELINE = """
    version: 1
    steps:
      - name: work
        precheck: order_steps:exists
        job: order_steps:work
"""

# Lines as they come: records of every outcome, bad JSON, blank lines.
LINES = st.lists(
    st.one_of(
        st.integers(min_value=0, max_value=40).map(lambda n: str(n).encode()),
        st.sampled_from([b"{bad", b"", b"  ", b'{"a": 1}', b"[2]"]),
    ),
    max_size=40,
)

Pick = Callable[[int], tuple[int, int]]


class InProcess(BatchExecutor):
    """Runs each batch here when it is sent; ``pick(in flight)`` says which batch answers
    next (its position among those in flight) and with how many of its pieces."""

    max_batch = 4  # many small batches: many orders

    def __init__(self, path: Path, pick: Pick, *, dry_run: bool = False) -> None:
        super().__init__(load_pipeline(path), workers=2, dry_run=dry_run)
        self._pick = pick
        self._runner: BatchRunner | None = None
        self._flight: list[tuple[Batch, collections.deque[Chunk]]] = []

    def open(self, *, prebuild_workers: bool = True) -> InProcess:
        self._runner = BatchRunner(self._spec)
        return self

    def close(self) -> None:
        assert self._runner is not None
        assert self._runner.close() == []
        self._local.close()

    def _tell_workers(self) -> None:
        pass

    def kill_workers(self) -> None:
        pass

    def _capacity(self) -> int:
        return 2 * self.workers - len(self._flight)

    def _in_flight(self) -> int:
        return len(self._flight)

    def _submit(self, batch: Batch) -> None:
        assert self._runner is not None and batch.args is not None
        pieces: list[Chunk] = []
        # A record per piece (FLUSH_INTERVAL is 0), sent as a worker sends them.
        pieces.append(self._runner.run(batch.args, pieces.append))
        travelled = [pickle.loads(pickle.dumps(piece)) for piece in pieces]
        self._flight.append((batch, collections.deque(travelled)))

    def _wait(self, timeout: float) -> None:
        if not self._flight:
            return
        k, count = self._pick(len(self._flight))
        batch, pieces = self._flight[k]
        for _ in range(min(count, len(pieces))):
            piece = pieces.popleft()
            self._deliver(batch, piece, 0.001 * piece[0])
        if not pieces:
            del self._flight[k]


@pytest.fixture(scope="module")
def pipeline_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("order")
    (root / "order_steps.py").write_text(textwrap.dedent(STEPS), encoding="utf-8")
    path = root / "pipeline.yaml"
    path.write_text(textwrap.dedent(PIPELINE), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def a_piece_per_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "FLUSH_INTERVAL", 0.0)


def picker(data: st.DataObject) -> Pick:
    def pick(in_flight: int) -> tuple[int, int]:
        return (
            data.draw(st.integers(0, in_flight - 1), label="batch"),
            data.draw(st.integers(1, 3), label="pieces"),
        )

    return pick


def encoded(results: list[Result]) -> list[bytes]:
    writer = ResultWriter(io.BytesIO())
    lines = [writer.encoder.encode(result) for result in results]
    writer.close()
    return lines


def serial_lines(path: Path, data: bytes) -> list[bytes]:
    with load_pipeline(path).coordinator(workers=1, timings=False) as serial:
        return encoded(list(serial.run_many(JsonlReader(io.BytesIO(data)))))


EXAMPLES = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@EXAMPLES
@given(lines=LINES, data=st.data())
def test_run_many_yields_one_result_per_item_in_input_order_whatever_comes_back_first(
    pipeline_path: Path, lines: list[bytes], data: st.DataObject
) -> None:
    text = b"".join(line + b"\n" for line in lines)
    expected = serial_lines(pipeline_path, text)
    with InProcess(pipeline_path, picker(data)) as executor:
        ordered = encoded(list(executor.run_many(JsonlReader(io.BytesIO(text)))))
    assert ordered == expected
    with InProcess(pipeline_path, picker(data)) as executor:
        unordered = list(executor.run_many(JsonlReader(io.BytesIO(text)), ordered=False))
    assert sorted(encoded(unordered)) == sorted(expected)
    assert sorted(result.index for result in unordered) == list(range(len(expected)))


@EXAMPLES
@given(lines=LINES, data=st.data(), max_lines=st.sampled_from([1, 3, 64]))
def test_run_lines_writes_the_serial_lines_whatever_comes_back_first(
    pipeline_path: Path, lines: list[bytes], data: st.DataObject, max_lines: int
) -> None:
    text = b"".join(line + b"\n" for line in lines)
    expected = serial_lines(pipeline_path, text)
    writer = ResultWriter(io.BytesIO())
    out: list[bytes] = []
    emitted: list[Result] = []
    counted: list[Any] = []

    def emit(result: Result) -> bool:
        emitted.append(result)
        out.append(writer.encoder.encode(result))
        return False

    with InProcess(pipeline_path, picker(data)) as executor:
        clean_line = writer.clean_line(executor.clean_steps())
        assert clean_line is not None
        clean = sum(
            executor.run_lines(
                JsonlReader(io.BytesIO(text)).iter_line_lists(max_lines=max_lines),
                clean_line=clean_line,
                put=out.append,
                emit=emit,
                tally=counted.append,
            )
        )
    writer.close()
    assert out == expected
    assert clean == sum(
        b'"status":"succeeded"' in line and b'"errors":[]' in line for line in expected
    )
    # A skipped record comes back either whole (emitted) or as its line written by the
    # worker, counted by its pattern (tally): once either way.
    skipped = sum(b'"skipped"' in line for line in expected)
    assert len(counted) + sum("skipped" in r.steps.values() for r in emitted) == skipped
