"""The result writer: line format (checked against the schema), latency, failing sinks."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import select
import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from choreo_cli.core.coordinator import Coordinator, Step
from choreo_cli.core.result import ExecutionError
from choreo_cli.errors import Cancel, Interrupted, Skip
from choreo_cli.jsonl.lines import dump_value
from choreo_cli.jsonl.reader import iter_items
from choreo_cli.jsonl.writer import ResultWriter, build_writer

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "result.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def check_lines(data: bytes) -> list[dict[str, Any]]:
    """Parse result lines, validating each against schemas/result.schema.json."""
    assert data.endswith(b"\n") or not data
    lines = [json.loads(line) for line in data.splitlines()]
    for line in lines:
        VALIDATOR.validate(line)
    return lines


class FakeBag:
    def __init__(self, data: dict[str, dict[str, Any]] | None = None) -> None:
        self._data = data or {"precheck": {}, "job": {}}

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return self._data


@dataclasses.dataclass
class FakeResult:
    index: int
    line: int | None = 1
    status: str = "succeeded"
    error: ExecutionError | None = None
    errors: list[ExecutionError] = dataclasses.field(default_factory=list)
    steps: dict[str, str] = dataclasses.field(default_factory=lambda: {"a": "succeeded"})
    attempts: dict[str, int] = dataclasses.field(default_factory=dict)
    input: Any = None
    bag: Any = dataclasses.field(default_factory=FakeBag)
    raw: bytes | None = None
    duration: float = 0.0
    clean: bool = False
    skip_pattern: int = 0


def test_clean_and_failing_records_through_the_real_coordinator() -> None:
    def exists(ctx: Any, record: dict[str, Any]) -> None:
        if record.get("exists"):
            raise Skip("statement exists", data=7)

    def create(ctx: Any, record: dict[str, Any]) -> int:
        if record.get("fail"):
            raise ValueError("bad amount")
        if record.get("cancel"):
            raise Cancel("closed account")
        return int(record["id"])

    def line(ctx: Any, record: dict[str, Any]) -> str:
        return "ok"

    coordinator = Coordinator()
    coordinator.add_step(Step(name="create statement", precheck=exists, job=create))
    coordinator.add_step(Step(name="create line", job=line))
    data = (
        b'{"id": 1}\n'
        b"\n"
        b'{"id": 2, "exists": true}\r\n'
        b'{"id": 3, "fail": true}\n'
        b'{"id": 4, "cancel": true}\n'
        b"{oops\n"
        b'"not a dict"\n'
        b'{"id": 7}'
    )
    sink = io.BytesIO()
    with ResultWriter(sink, include_input=True, include_data=True) as writer:
        for result in coordinator.run_many(iter_items(io.BytesIO(data))):
            writer.write(result)
    lines = check_lines(sink.getvalue())
    assert [(r["index"], r["line"], r["status"]) for r in lines] == [
        (0, 1, "succeeded"),
        (1, 3, "succeeded"),
        (2, 4, "failed"),
        (3, 5, "cancelled"),
        (4, 6, "invalid"),
        (5, 7, "invalid"),
        (6, 8, "succeeded"),
    ]
    assert lines[0] == {
        "index": 0,
        "line": 1,
        "status": "succeeded",
        "error": None,
        "errors": [],
        "steps": {"create statement": "succeeded", "create line": "succeeded"},
        "input": {"id": 1},
        "data": {"precheck": {}, "job": {"create statement": 1, "create line": "ok"}},
    }
    skip = {"step": "create statement", "phase": "precheck", "type": "Skip"}
    assert lines[1]["errors"] == [{**skip, "message": "statement exists"}]
    assert lines[1]["steps"] == {"create statement": "skipped", "create line": "succeeded"}
    assert lines[1]["data"] == {"precheck": {"create statement": 7}, "job": {"create line": "ok"}}
    assert lines[2]["error"] == {
        "step": "create statement",
        "phase": "job",
        "type": "ValueError",
        "message": "bad amount",
    }
    assert lines[2]["steps"] == {"create statement": "failed", "create line": "not_run"}
    assert lines[3]["steps"]["create statement"] == "cancelled"
    assert lines[4]["error"]["phase"] == "input"
    assert lines[4]["error"]["step"] is None
    assert lines[4]["error"]["type"] == "JSONDecodeError"
    assert lines[4]["input"] is None


def test_clean_fast_path_gives_the_same_line_as_the_full_encoding() -> None:
    writer = ResultWriter(io.BytesIO())
    steps = {"100% done": "succeeded", 'say "hi"': "succeeded"}
    for line in (5, None):
        result = FakeResult(index=3, line=line, steps=steps)
        fast = writer.encoder.encode(result)
        assert fast == writer.encoder.encode_full(result)
        assert fast == writer.encoder.encode(result)  # from the cached template
        check_lines(fast)
    writer.close()


def test_clean_fast_path_with_input_and_data() -> None:
    writer = ResultWriter(io.BytesIO(), include_input=True, include_data=True)
    result = FakeResult(index=0, input={"id": 1}, bag=FakeBag({"precheck": {}, "job": {"a": 1}}))
    assert writer.encoder.encode(result) == writer.encoder.encode_full(result)
    (line,) = check_lines(writer.encoder.encode(result))
    assert line["input"] == {"id": 1}
    assert line["data"] == {"precheck": {}, "job": {"a": 1}}
    writer.close()


def test_attempts_and_interruption_are_written() -> None:
    interrupted = ExecutionError(None, None, Interrupted("interrupted before step 'b'"))
    result = FakeResult(
        index=1,
        status="cancelled",
        error=interrupted,
        steps={"a": "succeeded", "b": "not_run"},
        attempts={"a": 3},
    )
    (line,) = check_lines(ResultWriter(io.BytesIO()).encoder.encode(result))
    assert line["attempts"] == {"a": 3}
    assert line["error"] == {
        "step": None,
        "phase": None,
        "type": "Interrupted",
        "message": "interrupted before step 'b'",
    }
    assert line["errors"] == []
    assert "duration" not in line


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no")


@dataclasses.dataclass
class Point:
    x: int


def test_values_that_are_not_json_are_written_with_repr() -> None:
    bag = FakeBag(
        {
            "precheck": {"a": Opaque()},
            "job": {
                "a": {1: "int key", None: "none key", (1, 2): "tuple key"},
                "b": {"set": {1}, "big": 2**70, "when": datetime.date(2024, 1, 2)},
                "c": Point(1),
                "d": BadRepr(),
            },
        }
    )
    result = FakeResult(index=0, status="failed", input=Opaque(), bag=bag)
    writer = ResultWriter(io.BytesIO(), include_input=True, include_data=True)
    (line,) = check_lines(writer.encoder.encode(result))
    assert line["input"] == "<Opaque>"
    assert line["data"]["precheck"] == {"a": "<Opaque>"}
    assert line["data"]["job"] == {
        "a": {"1": "int key", "null": "none key", "(1, 2)": "tuple key"},
        # an integer past 64 bits is JSON: written exactly, as a number
        "b": {"set": "{1}", "big": 2**70, "when": "datetime.date(2024, 1, 2)"},
        "c": "Point(x=1)",
        "d": "<BadRepr object: repr failed: RuntimeError('no')>",
    }


def test_cyclic_values_do_not_break_the_line() -> None:
    cycle: list[Any] = [1]
    cycle.append(cycle)
    value = json.loads(dump_value({"c": cycle}))
    assert value["c"][0] == 1


def test_lines_are_batched_and_on_written_sees_them_in_order() -> None:
    class CountingSink(io.BytesIO):
        writes = 0

        def write(self, data: Any) -> int:
            CountingSink.writes += 1
            return super().write(data)

    sink = CountingSink()
    seen: list[int] = []
    flushed: list[int] = []

    def on_written(results: list[Any]) -> None:
        flushed.append(sink.getbuffer().nbytes)
        seen.extend(r.index for r in results)

    with ResultWriter(sink, on_written=on_written, flush_interval=10) as writer:
        for i in range(10_000):
            writer.write(FakeResult(index=i, line=i + 1))
    assert seen == list(range(10_000))
    assert flushed[-1] == len(sink.getvalue())
    assert CountingSink.writes < 20
    assert [r["index"] for r in check_lines(sink.getvalue())] == list(range(10_000))


def test_a_line_reaches_a_pipe_within_100ms_while_the_producer_blocks() -> None:
    read_fd, write_fd = os.pipe()
    with open(write_fd, "wb") as stream, open(read_fd, "rb", buffering=0) as reader:
        writer = ResultWriter(stream)
        for attempt in range(3):
            start = time.monotonic()
            writer.write(FakeResult(index=attempt))
            # The producer now "blocks" (a slow record): nothing more is written.
            ready, _, _ = select.select([reader], [], [], 2.0)
            elapsed = time.monotonic() - start
            assert ready, "no line within 2 s"
            assert elapsed < 0.1 + 0.05 * attempt  # generous only for a loaded machine
            assert orjson.loads(reader.read(65536))["index"] == attempt
        writer.close()


def test_closed_pipe_sets_broken_and_never_raises() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    failures: list[bool] = []
    with open(write_fd, "wb") as stream:
        writer = ResultWriter(stream, on_failure=lambda: failures.append(True))
        for i in range(10):
            writer.write(FakeResult(index=i))
        writer.flush()
        assert writer.broken
        assert writer.failed
        assert writer.error is None
        assert writer.error_message is not None
        assert "closed the pipe" in writer.error_message
        for i in range(10_000):  # dropped quietly
            writer.write(FakeResult(index=i))
        writer.close()
    assert failures == [True]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_sets_error_with_a_clear_message() -> None:
    failures: list[bool] = []
    writer = build_writer("/dev/full", on_failure=lambda: failures.append(True))
    writer.write(FakeResult(index=0))
    writer.close()
    assert writer.failed
    assert not writer.broken
    assert isinstance(writer.error, OSError)
    assert writer.error_message == "cannot write results to /dev/full: No space left on device"
    assert failures == [True]


def test_on_written_failure_is_recorded() -> None:
    def on_written(results: list[Any]) -> None:
        raise OSError(28, "No space left on device")

    writer = ResultWriter(io.BytesIO(), on_written=on_written, name="out.jsonl")
    writer.write(FakeResult(index=0))
    writer.close()
    assert writer.failed
    assert not writer.broken
    assert writer.error_message is not None
    assert writer.error_message.startswith("results were written to out.jsonl but on_written")


def test_build_writer_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with build_writer(path, include_input=True) as writer:
        writer.write(FakeResult(index=0, input=[1, 2]))
    with pytest.raises(ValueError, match="closed ResultWriter"):
        writer.write(FakeResult(index=1))
    assert writer.lines_written == 1
    assert check_lines(path.read_bytes())[0]["input"] == [1, 2]


def test_writer_is_thread_safe_for_the_flusher() -> None:
    sink = io.BytesIO()
    with ResultWriter(sink, flush_interval=0.001, batch_bytes=1 << 30) as writer:
        for i in range(5_000):
            writer.write(FakeResult(index=i))
    assert [r["index"] for r in check_lines(sink.getvalue())] == list(range(5_000))


def test_packaged_result_schema_equals_the_repository_copy() -> None:
    from importlib import resources

    packaged = resources.files("choreo_cli").joinpath("schemas/result.schema.json")
    assert json.loads(packaged.read_text(encoding="utf-8")) == SCHEMA
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_every_schema_property_has_a_title_and_description() -> None:
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                assert sub.get("title"), f"{where}.{name} has no title"
                assert sub.get("description"), f"{where}.{name} has no description"
            for key, sub in node.items():
                walk(sub, f"{where}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}[{i}]")

    walk(SCHEMA, "$")


def test_on_failure_raising_on_the_flusher_thread_is_contained() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)

    def on_failure() -> None:
        raise KeyboardInterrupt  # anything: the background thread must survive quietly

    with open(write_fd, "wb") as stream:
        writer = ResultWriter(stream, on_failure=on_failure, flush_interval=0.01)
        writer.write(FakeResult(index=0))
        deadline = time.monotonic() + 5
        while not writer.broken and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.broken
        writer.close()
