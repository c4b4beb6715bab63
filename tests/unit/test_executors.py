"""Executors: thread, process and Dask give the same Results; workers die, runs are interrupted."""

from __future__ import annotations

import io
import json
import pickle
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from choreo_cli import Coordinator, Skip, Step, load_pipeline
from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.core.result import Result
from choreo_cli.errors import Cancel, ResourceError
from choreo_cli.executors import ExecutorUnavailable, WorkerDied, build_executor
from choreo_cli.executors.batching import BatchSizer
from choreo_cli.executors.dask_attempts import _Earlier
from choreo_cli.executors.portable import (
    ChunkWriter,
    RemoteError,
    ResultBuilder,
    encode_chunk,
    encode_entry,
    export_exception,
    export_result,
    rebuild_exception,
)
from choreo_cli.executors.process import ProcessExecutor
from choreo_cli.jsonl.reader import JsonlReader
from choreo_cli.jsonl.writer import ResultWriter

STEPS = """
    import os
    import threading
    from pathlib import Path

    from choreo_cli import Cancel, Skip


    def counter(path):
        with open(path, "a") as file:
            file.write(f"built {os.getpid()}\\n")
        yield object()
        with open(path, "a") as file:
            file.write(f"closed {os.getpid()}\\n")


    def exists(ctx, record):
        ctx.resources.counter
        if record.get("skip"):
            raise Skip("exists", data=record["id"])
        if record.get("broken_precheck"):
            raise LookupError("precheck broke")


    def work(ctx, record):
        if record.get("fail"):
            raise ValueError(f"bad record {record['id']}")
        if record.get("key"):
            raise KeyError("missing")
        if record.get("cancel"):
            raise Cancel("cancelled on purpose")
        if record.get("die"):
            os._exit(3)
        if record.get("nap"):
            import time
            time.sleep(record["nap"])
        return {"double": record["id"] * 2, "lock": threading.Lock() if record.get("lock") else None}


    async def after(ctx, record):
        return ctx.bag.job("work")["double"]
"""

PIPELINE = """
    version: 1
    resources:
      counter:
        factory: steps:counter
        with: {path: "${COUNTS}"}
        scope: worker
    steps:
      - name: work
        precheck: steps:exists
        job: steps:work
      - name: after
        job: steps:after
"""


def make_input(count: int = 60, **marks: int) -> bytes:
    """JSON lines: successes, skips, failures, cancels, and one line that is not JSON."""
    import json

    lines = []
    for i in range(count):
        record: dict[str, Any] = {"id": i}
        if i % 7 == 3:
            record["skip"] = True
        if i % 11 == 5:
            record["fail"] = True
        if i % 13 == 4:
            record["cancel"] = True
        if i == 9:
            record["key"] = True
        if i == 10:
            record["broken_precheck"] = True
        for name, at in marks.items():
            if i == at:
                record[name] = True
        lines.append(json.dumps(record).encode())
        if i == 20:
            lines.append(b"{not json")
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def pipeline_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "steps.py").write_text(textwrap.dedent(STEPS), encoding="utf-8")
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(PIPELINE), encoding="utf-8")
    monkeypatch.setenv("COUNTS", str(tmp_path / "counts.txt"))
    return path


def lines_of(results: Iterator[Result]) -> list[bytes]:
    sink = io.BytesIO()
    with ResultWriter(sink, include_input=True, include_data=True) as writer:
        for result in results:
            writer.write(result)
    return sink.getvalue().splitlines()


def run_lines(executor: Any, data: bytes, *, ordered: bool = True) -> list[bytes]:
    return lines_of(executor.run_many(JsonlReader(io.BytesIO(data)), ordered=ordered))


def thread_lines(pipeline_file: Path, data: bytes) -> list[bytes]:
    with build_executor("thread", load_pipeline(pipeline_file), workers=1) as executor:
        return run_lines(executor, data)


# -- portable results ----------------------------------------------------------------------


def test_every_kind_of_result_survives_the_trip_between_processes() -> None:
    def precheck(ctx: Any, record: dict[str, Any]) -> None:
        if record.get("skip"):
            raise Skip("exists", data={"at": record["id"]})

    def job(ctx: Any, record: dict[str, Any]) -> Any:
        if record.get("fail"):
            raise KeyError("missing")
        if record.get("cancel"):
            raise Cancel("stop")
        return {1: {2}} if record.get("odd") else record["id"]

    coordinator = Coordinator()
    coordinator.add_step(Step(name="One", job=job, precheck=precheck))
    coordinator.add_step(Step(name="two", job=lambda ctx: None))
    records = [
        Record({"id": 0}, 1, b'{"id": 0}\n'),
        Record({"id": 1, "skip": True}, 2),
        Record({"id": 2, "fail": True}, 3),
        Record({"id": 3, "cancel": True}, 4),
        Record({"id": 4, "odd": True}, 5),
        InvalidLine(6, ValueError("not JSON"), b"{\n"),
        {"plain": True},
    ]
    originals = [coordinator.run(item, index=i) for i, item in enumerate(records)]
    originals[0].bag.set_job("extra step", [1, 2])  # a name no step has
    interrupted = Coordinator()
    interrupted.add_step(Step(name="One", job=job))
    interrupted.add_step(Step(name="two", job=lambda ctx: None))
    interrupted.interrupt()
    originals.append(interrupted.run({"id": 9}, index=7))
    dry = Coordinator(dry_run=True)
    dry.add_step(Step(name="One", job=job, precheck=precheck))
    dry.add_step(Step(name="two", job=lambda ctx: None))
    originals.append(dry.run({"id": 10}, index=8))

    rebuilt = []
    for original in originals:
        builder = ResultBuilder(("One", "two"), dry_run=original is originals[-1])
        payload = pickle.loads(pickle.dumps(export_result(original, 2)))
        item_line = original.line
        rebuilt.append(
            builder.build(payload, original.index, item_line, original.input, original.raw)
        )
    assert lines_of(iter(rebuilt)) == lines_of(iter(originals))
    assert [r.steps for r in rebuilt] == [r.steps for r in originals]
    assert rebuilt[0].bag.job("EXTRA STEP") == [1, 2]
    assert rebuilt[0].raw == b'{"id": 0}\n'
    with pytest.raises(Cancel, match="stop"):
        rebuilt[3].raise_for_status()


def test_an_exception_comes_back_with_its_type_name_and_message() -> None:
    error = rebuild_exception(export_exception(KeyError("missing")))
    assert type(error).__name__ == "KeyError"
    assert str(error) == "'missing'"
    assert isinstance(error, KeyError) and isinstance(error, RemoteError)

    class Custom(Exception):
        def __init__(self, a: int, b: int) -> None:  # does not unpickle from args
            super().__init__(f"{a}/{b}")

    custom = rebuild_exception(export_exception(Custom(1, 2)))
    assert (type(custom).__name__, str(custom)) == ("Custom", "1/2")
    assert type(pickle.loads(pickle.dumps(custom))) is type(custom)
    assert type(rebuild_exception(export_exception(Skip("s")))) is Skip


def test_an_exception_whose_str_raises_has_the_thread_executors_message() -> None:
    """A record's line must not change with the executor: a worker sends the message the
    writer would have made from the exception itself."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    def job(ctx: Any) -> None:
        raise Unprintable

    coordinator = Coordinator()
    coordinator.add_step(Step(name="s", job=job))
    original = coordinator.run({"id": 1})
    payload = pickle.loads(pickle.dumps(export_result(original, 1)))
    rebuilt = ResultBuilder(("s",)).build(payload, 0, None, {"id": 1}, None)
    assert lines_of(iter([rebuilt])) == lines_of(iter([original]))
    assert (
        b"<str() of the exception failed: RuntimeError('no str')>" in lines_of(iter([rebuilt]))[0]
    )


def test_a_bag_value_that_does_not_pickle_becomes_its_repr() -> None:
    payload = (0.1, {"work": threading.Lock(), "fine": 3}, None, None)
    chunk = (2, [{"work": threading.Lock()}, {"fine": 3}], None, [(1, payload)])
    (count, jobs, pres, others) = pickle.loads(encode_chunk(chunk))[0]
    assert (count, pres, jobs[1]) == (2, None, {"fine": 3})
    assert jobs[0]["work"].startswith("<unlocked _thread.lock object")
    ((k, decoded),) = others
    assert k == 1 and decoded[1]["work"].startswith("<unlocked _thread.lock object")
    assert decoded[1]["fine"] == 3


def test_a_chunk_rebuilds_the_results_of_every_kind_in_their_places() -> None:
    """Clean results travel as two columns, the others whole; each lands at its position."""

    def job(ctx: Any, record: Any) -> Any:
        if isinstance(record, dict) and record.get("fail"):
            raise ValueError("bad")
        return None if record == "none" else {"seen": record}

    coordinator = Coordinator(timings=False)  # as in a worker (a timed result travels whole)
    coordinator.add_step(Step(name="Only", job=job))
    items: list[Any] = [
        Record({"id": 0}, 1, b"raw\n", 10),
        InvalidLine(2, ValueError("not JSON")),  # made in the parent: not sent
        Record({"id": 2, "fail": True}, 3, None, 12),
        "none",
        Record({"id": 4}, 5),
    ]
    positions = [0, 2, 3, 4]
    originals = [coordinator.run(items[pos], index=20 + pos) for pos in positions]
    writer = ChunkWriter(step_count=1)
    for original in originals[:2]:
        writer.add(original)
    first = pickle.loads(encode_chunk(writer.take()))[0]
    for original in originals[2:]:
        writer.add(original)
    second = pickle.loads(encode_chunk(writer.take()))[0]
    assert first[0] == 2 and [k for k, _ in first[3]] == [1]  # the failed one travels whole
    assert second[1:3] == ([None, {"Only".casefold(): {"seen": {"id": 4}}}], None)

    builder = ResultBuilder(("Only",))
    results: list[Result | None] = [None] * len(items)
    builder.build_chunk(results, first, items, positions, 0, 20)
    builder.build_chunk(results, second, items, positions, 2, 20)
    assert results[1] is None
    rebuilt = [results[pos] for pos in positions]
    assert [r.index for r in rebuilt if r is not None] == [10, 12, 23, 24]
    expected = [coordinator.run(items[pos], index=20 + pos) for pos in positions]
    assert lines_of(iter(rebuilt)) == lines_of(iter(expected))  # type: ignore[arg-type]
    assert [r.clean for r in rebuilt if r is not None] == [True, False, True, True]
    assert rebuilt[0] is not None and rebuilt[0].raw == b"raw\n"
    assert rebuilt[0].bag.job("ONLY") == {"seen": {"id": 0}}


def test_a_journal_gives_back_every_result_of_the_records_a_dead_attempt_ran() -> None:
    """A Dask worker journals each record's results before the next starts, but for
    records that ran clean with an empty bag: with the record it died running, that gives
    back the chunk the records before it would have sent."""

    def job(ctx: Any, record: Any) -> Any:
        if record % 3 == 1:
            raise ValueError(f"bad {record}")
        return record if record % 2 else None

    coordinator = Coordinator(timings=False)
    coordinator.add_step(Step(name="Only", job=job))
    items: list[Any] = list(range(9))
    writer = ChunkWriter(step_count=1)
    frames = []
    for pos in range(6):  # it died running record 6
        writer.add(coordinator.run(items[pos], index=pos))
        entry = writer.last_kept()
        if entry is not None:
            frames.append((pos, encode_entry(entry)))
    assert [pos for pos, _ in frames] == [1, 3, 4, 5]  # 0 and 2 ran clean, bags empty
    sent = writer.take()
    earlier = _Earlier(frames, 6, "Dask worker tcp://w:1 (process 9) died")
    tail, died = earlier.resume((0, None, items, None))
    assert earlier.done == 6 and tail == (6, None, items[6:], None)
    error = died(6)
    assert isinstance(error, WorkerDied)
    assert str(error) == "Dask worker tcp://w:1 (process 9) died while running this record"
    assert died(7) is None
    builder = ResultBuilder(("Only",))
    back: list[Result | None] = [None] * 6
    builder.build_chunk(back, pickle.loads(earlier.parts[0])[1], items, range(6), 0, 0)
    expected: list[Result | None] = [None] * 6
    builder.build_chunk(expected, sent, items, range(6), 0, 0)
    assert lines_of(iter(back)) == lines_of(iter(expected))  # type: ignore[arg-type]


def test_build_executor_names_what_is_wrong(pipeline_file: Path) -> None:
    pipeline = load_pipeline(pipeline_file)
    with pytest.raises(
        ExecutorUnavailable, match=r"unknown executor 'gpu' \(executors: thread, process, dask\)"
    ):
        build_executor("gpu", pipeline)
    with pytest.raises(ExecutorUnavailable, match="scheduler address is for the dask executor"):
        build_executor("process", pipeline, scheduler="tcp://127.0.0.1:8786")


# -- process ---------------------------------------------------------------------------------


def test_process_gives_the_thread_executors_lines_in_order_and_unordered(
    pipeline_file: Path,
) -> None:
    data = make_input()
    expected = thread_lines(pipeline_file, data)
    with ProcessExecutor(load_pipeline(pipeline_file), workers=2) as executor:
        assert run_lines(executor, data) == expected
        unordered = run_lines(executor, data, ordered=False)
    assert sorted(unordered) == sorted(expected)
    counts = (pipeline_file.parent / "counts.txt").read_text().split("\n")
    built = [line for line in counts if line.startswith("built")]
    # thread: one build; process: once per worker process, reused across batches and runs.
    assert len(built) == 3
    assert sum(line.startswith("closed") for line in counts) == 3


def fused_lines(runner: Any, data: bytes, *, keep_raw: bool = False) -> tuple[list[bytes], int]:
    """The result lines of ``runner.run_lines`` (what `choreo run` writes), and the clean count;
    each emitted Result's raw bytes are checked against its input line."""
    writer = ResultWriter(io.BytesIO())
    clean_line = writer.clean_line(dict.fromkeys(["work", "after"], "succeeded"))
    assert clean_line is not None
    out: list[bytes] = []
    source = data.split(b"\n")

    def emit(result: Result) -> bool:
        out.append(writer.encoder.encode(result))
        if keep_raw:
            assert result.raw == source[result.line - 1] + b"\n"  # type: ignore[operator]
        return False

    batches = JsonlReader(io.BytesIO(data)).iter_line_lists(max_lines=7)
    counts = list(
        runner.run_lines(
            batches, clean_line=clean_line, put=out.append, emit=emit, keep_raw=keep_raw
        )
    )
    writer.close()
    return out, sum(counts)


def with_blank_lines(data: bytes) -> bytes:
    lines = data.split(b"\n")
    lines[3:3] = [b"", b"  \r"]
    lines[40:40] = [b"\t"]
    return b"\n".join(lines)


def test_process_run_lines_writes_the_thread_executors_lines(pipeline_file: Path) -> None:
    """The fused loop of `choreo run`: workers parse the lines, clean records come back as counts."""
    data = with_blank_lines(make_input(300))
    pipeline = load_pipeline(pipeline_file)
    serial = build_executor("thread", pipeline, workers=1, timings=False)
    with serial:
        expected, expected_clean = fused_lines(serial, data)
    assert len(expected) == 301 and expected_clean > 200  # blank lines: no record
    with ProcessExecutor(load_pipeline(pipeline_file), workers=2) as executor:
        assert fused_lines(executor, data) == (expected, expected_clean)
        assert fused_lines(executor, data, keep_raw=True) == (expected, expected_clean)


def test_run_lines_batches_hold_at_most_max_batch_bytes_of_lines(pipeline_file: Path) -> None:
    data = with_blank_lines(make_input(120))
    pipeline = load_pipeline(pipeline_file)
    with build_executor("thread", pipeline, workers=1, timings=False) as serial:
        expected = fused_lines(serial, data, keep_raw=True)
    sent: list[bytes] = []
    with ProcessExecutor(load_pipeline(pipeline_file), workers=2) as executor:
        executor.max_batch_bytes = 40  # about two lines (a longer line goes alone)
        submit = executor._submit

        def record_size(batch: Any) -> None:
            sent.append(batch.args[2])  # the lines, joined with newlines
            submit(batch)

        executor._submit = record_size  # type: ignore[method-assign]
        assert fused_lines(executor, data, keep_raw=True) == expected
    assert len(sent) > 40
    assert all(len(lines) - lines.count(b"\n") <= 40 or b"\n" not in lines for lines in sent)
    assert any(b"\n" in lines for lines in sent)


def test_the_batch_sizer_weighs_each_batch_by_its_records() -> None:
    sizer = BatchSizer(target_seconds=0.1, max_size=100_000, growth=16)
    assert not sizer.measured and sizer.size == 1
    sizer.observe(1, 0.01)  # the first record pays the cold start: 10 ms
    assert sizer.measured and sizer.size == 10
    sizer.observe(10, 10 * 0.0001)  # ten records at 0.1 ms outweigh it
    # 10 ms + (0.1 - 10 ms) * 10 / 10.7: 0.75 ms (a plain moving average said 7 ms)
    assert sizer._per_record == pytest.approx(0.000748, rel=0.01)
    assert sizer.size == 133  # 0.1 s of records at 0.75 ms (at most 16 times the last size)
    for _ in range(30):  # batches of one size: a plain moving average, 0.3 each
        sizer.observe(100, 100 * 0.001)
    assert sizer._per_record == pytest.approx(0.001)
    assert sizer.size == 100


def test_a_worker_that_dies_in_run_lines_fails_only_its_records(pipeline_file: Path) -> None:
    data = make_input(200, die=152)
    with ProcessExecutor(load_pipeline(pipeline_file), workers=2) as executor:
        lines, _ = fused_lines(executor, data)
    indices = [int(line.split(b",")[0].split(b":")[1]) for line in lines]
    assert indices == list(range(201))
    died = [i for i, line in zip(indices, lines, strict=True) if b'"WorkerDied"' in line]
    assert 152 + 1 in died  # the killer (index 153: line 21 is not JSON)
    assert died == list(range(died[0], 154))  # the tail of its batch, ending with it
    with build_executor("thread", load_pipeline(pipeline_file), workers=1, timings=False) as serial:
        expected, _ = fused_lines(serial, make_input(200))
    assert [x for i, x in enumerate(lines) if i not in died] == [
        x for i, x in enumerate(expected) if i not in died
    ]


def test_an_interrupted_run_lines_gives_every_record_read_one_line(pipeline_file: Path) -> None:
    import json

    data = b"".join(json.dumps({"id": i, "nap": 0.002}).encode() + b"\n" for i in range(5000))
    writer = ResultWriter(io.BytesIO())
    clean_line = writer.clean_line({"work": "succeeded", "after": "succeeded"})
    assert clean_line is not None
    out: list[bytes] = []
    with ProcessExecutor(load_pipeline(pipeline_file), workers=2) as executor:

        def put(line: bytes) -> None:
            out.append(line)
            if len(out) == 20:
                executor.interrupt("test")

        def emit(result: Result) -> bool:
            out.append(writer.encoder.encode(result))
            return False

        batches = JsonlReader(io.BytesIO(data)).iter_line_lists()
        list(executor.run_lines(batches, clean_line=clean_line, put=put, emit=emit))
    writer.close()
    indices = [json.loads(line)["index"] for line in out]
    assert indices == list(range(len(out)))
    assert 20 < len(out) < 5000
    assert json.loads(out[-1])["status"] == "cancelled"


def test_a_worker_that_dies_fails_only_its_records_and_is_replaced(pipeline_file: Path) -> None:
    data = make_input(200, die=152)
    with ProcessExecutor(load_pipeline(pipeline_file), workers=2) as executor:
        results = list(executor.run_many(JsonlReader(io.BytesIO(data))))
    assert [r.index for r in results] == list(range(201))
    died = [r for r in results if r.error is not None and r.error.type == "WorkerDied"]
    killer = [r for r in died if "while running this record" in r.error.message]  # type: ignore[union-attr]
    assert [r.input["id"] for r in killer] == [152]
    assert "died (exit code 3) while running this record" in str(killer[0].error.exception)  # type: ignore[union-attr]
    # Records finished but not yet reported are lost with it (at most one flush interval).
    assert all(r.index < killer[0].index for r in died if r is not killer[0])
    # ...and they are the tail of the killer's batch: one contiguous run ending with it
    # (how many depends on the machine's speed, so no fixed bound).
    indices = sorted(r.index for r in died)
    assert indices == list(range(indices[0], killer[0].index + 1))
    # Every other record has the result it has without the dying one (a new worker ran them).
    lost = {r.index for r in died}
    expected = thread_lines(pipeline_file, make_input(200))
    assert [line for i, line in enumerate(lines_of(iter(results))) if i not in lost] == [
        line for i, line in enumerate(expected) if i not in lost
    ]


def test_an_interrupted_process_run_gives_every_record_read_one_result(
    pipeline_file: Path,
) -> None:
    read = 0

    def records() -> Iterator[dict[str, Any]]:
        nonlocal read
        for i in range(10_000):
            read += 1
            yield {"id": i, "nap": 0.002}

    with ProcessExecutor(load_pipeline(pipeline_file), workers=2) as executor:
        results = []
        for result in executor.run_many(records()):
            results.append(result)
            if len(results) == 20:
                executor.interrupt("test")
    assert [r.index for r in results] == list(range(read))
    assert read < 10_000
    cancelled = [r for r in results if r.status == "cancelled"]
    assert cancelled and all(r.error.type == "Interrupted" for r in cancelled)  # type: ignore[union-attr]
    assert "interrupted before step" in cancelled[-1].error.message  # type: ignore[union-attr]


def test_a_keyboard_interrupt_in_the_last_record_interrupts_a_process_run(tmp_path: Path) -> None:
    """The worker raises the stop flag before it sends the record's result: choreo reads
    the flag after each chunk, so it is interrupted even when no chunk follows."""
    (tmp_path / "ki_steps.py").write_text(
        "def one(ctx, record):\n    if record == 9:\n        raise KeyboardInterrupt\n"
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text("version: 1\nsteps:\n  - name: one\n    job: ki_steps:one\n")
    for _ in range(3):
        with ProcessExecutor(load_pipeline(path), workers=1) as executor:
            results = list(executor.run_many(range(10)))
        assert [r.status for r in results] == ["succeeded"] * 9 + ["cancelled"]
        assert executor.interrupted


def test_process_holds_a_bounded_number_of_records_whatever_the_input(tmp_path: Path) -> None:
    (tmp_path / "steps.py").write_text("def one(ctx, record):\n    return 1\n")
    path = tmp_path / "pipeline.yaml"
    path.write_text("version: 1\nsteps:\n  - name: one\n    job: steps:one\n")
    read = 0
    most = 0
    with ProcessExecutor(load_pipeline(path), workers=2) as executor:
        bound = executor.workers * executor.batches_per_worker * executor.max_batch

        def records() -> Iterator[int]:
            nonlocal read
            for i in range(200_000):
                read += 1
                yield i

        for count, result in enumerate(executor.run_many(records()), 1):
            most = max(most, read - count)
            assert result.index == count - 1
    assert count == 200_000
    assert most <= bound


def test_a_resource_that_cannot_be_built_stops_the_run_before_any_record(
    pipeline_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COUNTS", str(pipeline_file.parent / "no" / "such" / "dir" / "c.txt"))
    executor = ProcessExecutor(load_pipeline(pipeline_file), workers=2)
    with pytest.raises(ResourceError, match="resource 'counter': factory steps:counter raised"):
        executor.open()
    executor.close()


def test_a_teardown_that_fails_in_a_worker_is_reported(tmp_path: Path) -> None:
    (tmp_path / "steps.py").write_text(
        "def conn():\n    yield 1\n    raise OSError('disk gone')\n\n"
        "def one(ctx, record):\n    return ctx.resources.conn\n"
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "version: 1\nresources:\n  conn: {factory: steps:conn}\n"
        "steps:\n  - name: one\n    job: steps:one\n"
    )
    executor = ProcessExecutor(load_pipeline(path), workers=1).open()
    assert [r.status for r in executor.run_many([1, 2])] == ["succeeded", "succeeded"]
    with pytest.raises(
        ResourceError, match=r"worker process \d+: .*teardown raised OSError: disk gone"
    ):
        executor.close()


# -- dask ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_counts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dask") / "counts.txt"


@pytest.fixture(scope="module")
def dask_scheduler(dask_counts: Path) -> Iterator[str]:
    distributed = pytest.importorskip("distributed")
    import logging
    import os

    # Dask workers read their own environment: the one they were started with.
    saved = os.environ.get("COUNTS")
    os.environ["COUNTS"] = str(dask_counts)
    try:
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # Not the default port 8787 (taken by any other cluster running here).
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        )
    finally:
        if saved is None:
            del os.environ["COUNTS"]
        else:
            os.environ["COUNTS"] = saved
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def test_dask_gives_the_thread_executors_lines_and_builds_resources_once_per_worker(
    pipeline_file: Path, dask_scheduler: str, dask_counts: Path
) -> None:
    data = make_input()
    expected = thread_lines(pipeline_file, data)
    dask_counts.unlink(missing_ok=True)
    pipeline = load_pipeline(pipeline_file)
    with build_executor("dask", pipeline, workers=2, scheduler=dask_scheduler) as executor:
        assert run_lines(executor, data) == expected
        assert sorted(run_lines(executor, data, ordered=False)) == sorted(expected)
    counts = dask_counts.read_text().split("\n")
    assert sum(line.startswith("built") for line in counts) == 2  # one per Dask worker
    assert sum(line.startswith("closed") for line in counts) == 2


def test_dask_run_lines_writes_the_thread_executors_lines(
    pipeline_file: Path, dask_scheduler: str
) -> None:
    data = with_blank_lines(make_input(120))
    pipeline = load_pipeline(pipeline_file)
    with build_executor("thread", pipeline, workers=1, timings=False) as serial:
        expected = fused_lines(serial, data, keep_raw=True)
    with build_executor("dask", pipeline, workers=2, scheduler=dask_scheduler) as executor:
        assert fused_lines(executor, data, keep_raw=True) == expected


def test_an_interrupted_dask_run_cancels_pending_batches(
    pipeline_file: Path, dask_scheduler: str
) -> None:
    records = [{"id": i, "nap": 0.01} for i in range(400)]
    pipeline = load_pipeline(pipeline_file)
    with build_executor("dask", pipeline, workers=2, scheduler=dask_scheduler) as executor:
        results = []
        for result in executor.run_many(records):
            results.append(result)
            if len(results) == 5:
                executor.interrupt("test")
    assert [r.index for r in results] == list(range(len(results)))
    assert len(results) < 400
    assert results[-1].status == "cancelled"


def test_a_dask_worker_that_dies_fails_only_the_record_it_was_running(
    pipeline_file: Path, dask_scheduler: str
) -> None:
    # The cluster is given by address, as a remote one: Dask's own retry (allowed-failures)
    # runs the batch again on the other worker, which takes back what the dead one ran.
    data = make_input(400, die=152)
    pipeline = load_pipeline(pipeline_file)
    with build_executor("thread", pipeline, workers=1, timings=False) as serial:
        expected, _ = fused_lines(serial, make_input(400))
    with build_executor("dask", pipeline, workers=2, scheduler=dask_scheduler) as executor:
        got, _ = fused_lines(executor, data)
    assert len(got) == len(expected)
    differ = [k for k, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    assert len(differ) == 1
    died = json.loads(got[differ[0]])
    assert (died["index"], died["error"]["type"]) == (153, "WorkerDied")  # id 152, after line 21
    assert died["error"]["message"].endswith("died while running this record")


def test_a_dask_worker_that_dies_in_run_many_fails_only_the_record_it_was_running(
    pipeline_file: Path, dask_scheduler: str
) -> None:
    """run_many, as `choreo run --include-data` or `--include-input` runs: each record whose
    bag holds something is journalled before the next starts, so the retry takes back
    every result the dead worker made, bags included, and runs none of them again."""
    data = make_input(400, die=152)
    pipeline = load_pipeline(pipeline_file)
    expected = thread_lines(pipeline_file, make_input(400))
    with build_executor("dask", pipeline, workers=2, scheduler=dask_scheduler) as executor:
        got = run_lines(executor, data)
    assert len(got) == len(expected)
    differ = [k for k, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    assert len(differ) == 1
    died = json.loads(got[differ[0]])
    assert (died["index"], died["error"]["type"]) == (153, "WorkerDied")  # id 152, after line 21
    assert died["error"]["message"].endswith("died while running this record")
