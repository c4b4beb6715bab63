"""The fused loop of `choreo run` (Coordinator.run_lines) writes what run_many would."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_property import build, tables

from choreo_cli import Coordinator, Result, Step
from choreo_cli.output import ResultWriter
from choreo_cli.records import JsonlReader

# Lines as they come: records, blank lines, bad JSON, bad UTF-8, CRLF endings.
LINES = st.lists(
    st.sampled_from(
        [b"1", b"2", b"7", b'{"a": 1}', b"[3]", b"", b"   ", b"\r", b"{bad", b"\xff\xfe", b"4\r"]
    ),
    max_size=12,
)


def through_run_many(
    coordinator: Coordinator, data: bytes
) -> tuple[bytes, list[bytes | None], list[Any]]:
    writer = ResultWriter(io.BytesIO())
    results = list(coordinator.run_many(JsonlReader(io.BytesIO(data), keep_raw=True)))
    writer.close()
    return (
        b"".join(writer.encode(r) for r in results),
        [r.raw for r in results if r.status != "succeeded"],
        [r.bag.as_dict() for r in results if not r.clean and r.status != "invalid"],
    )


def through_run_lines(
    coordinator: Coordinator, data: bytes, *, max_lines: int
) -> tuple[bytes, list[bytes | None], list[Any], int]:
    writer = ResultWriter(io.BytesIO())
    clean_line = writer.clean_line(coordinator.clean_steps())
    assert clean_line is not None
    out: list[bytes] = []
    raws: list[bytes | None] = []
    emitted: list[Result] = []

    def emit(result: Result) -> bool:
        emitted.append(result)
        out.append(writer.encode(result))
        if result.status != "succeeded":
            raws.append(result.raw)
        return False

    reader = JsonlReader(io.BytesIO(data))
    counts = list(
        coordinator.run_lines(
            reader.iter_line_lists(max_lines=max_lines),
            clean_line=clean_line,
            put=out.append,
            emit=emit,
            keep_raw=True,
        )
    )
    writer.close()
    # Read at the end: a Result's bag must not be touched by the records after it.
    bags = [r.bag.as_dict() for r in emitted if r.status != "invalid"]
    return b"".join(out), raws, bags, sum(counts)


@settings(derandomize=True, database=None, max_examples=200, deadline=None)
@given(tables, LINES, st.sampled_from([1, 2, 1024]), st.booleans())
def test_run_lines_writes_exactly_what_run_many_writes(
    table: Any, lines: list[bytes], max_lines: int, last_newline: bool
) -> None:
    data = b"\n".join(lines) + (b"\n" if last_newline and lines else b"")
    calls: list[tuple[str, str]] = []
    expected, expected_raws, expected_bags = through_run_many(build(table, calls), data)
    expected_calls = list(calls)
    calls.clear()
    got, raws, bags, clean = through_run_lines(build(table, calls), data, max_lines=max_lines)
    assert got == expected
    assert raws == expected_raws
    assert bags == expected_bags
    assert calls == expected_calls
    assert clean == expected.count(b'"status":"succeeded","error":null,"errors":[]')


def test_the_clean_count_comes_after_each_list_and_numbers_carry_on() -> None:
    coordinator = Coordinator()
    coordinator.add_step(Step(name="echo", job=lambda ctx, record: (ctx.index, ctx.line)))
    seen: list[Any] = []
    out: list[bytes] = []
    counts = list(
        coordinator.run_lines(
            [[b"1", b"", b"2"], [b"x", b"3"]],
            clean_line=b"%d:%d\n",
            put=out.append,
            emit=lambda result: seen.append((result.index, result.line, result.status)),
        )
    )
    assert counts == [2, 1]
    assert out == [b"0:1\n", b"1:3\n", b"3:5\n"]
    assert seen == [(2, 4, "invalid")]


def test_a_true_emit_stops_reading() -> None:
    calls: list[Any] = []

    def job(ctx: Any, record: Any) -> None:
        calls.append(record)
        if record == 2:
            raise ValueError("no")

    coordinator = Coordinator()
    coordinator.add_step(Step(name="job", job=job))
    emitted: list[Result] = []
    counts = list(
        coordinator.run_lines(
            [[b"1", b"2", b"3"], [b"4"]],
            clean_line=b"%d %d",
            put=lambda line: None,
            emit=lambda result: emitted.append(result) or True,
        )
    )
    assert calls == [1, 2]
    assert counts == [1]
    assert [r.status for r in emitted] == ["failed"]


def test_an_interruption_ends_the_record_in_flight_and_reads_no_more() -> None:
    calls: list[Any] = []
    coordinator = Coordinator()

    def first(ctx: Any, record: Any) -> None:
        calls.append(("first", record))
        if record == 2:
            coordinator.interrupt("stop")

    coordinator.add_step(Step(name="first", job=first))
    coordinator.add_step(
        Step(name="second", job=lambda ctx, record: calls.append(("second", record)))
    )
    emitted: list[Result] = []
    out: list[bytes] = []
    counts = list(
        coordinator.run_lines(
            [[b"1", b"2", b"3"]],
            clean_line=b"%d %d",
            put=out.append,
            emit=emitted.append,
        )
    )
    assert calls == [("first", 1), ("second", 1), ("first", 2)]
    assert counts == [1]
    assert out == [b"0 1"]
    assert [(r.index, r.status, r.error.type if r.error else None) for r in emitted] == [
        (1, "cancelled", "Interrupted")
    ]
    # Interrupted before it starts: nothing is read at all.
    assert (
        list(coordinator.run_lines([[b"9"]], clean_line=b"", put=out.append, emit=emitted.append))
        == []
    )


def test_run_lines_needs_one_worker() -> None:
    coordinator = Coordinator(workers=2)
    try:
        coordinator.run_lines([], clean_line=b"", put=print, emit=print)
    except ValueError as exc:
        assert "workers == 1" in str(exc)
    else:
        raise AssertionError("run_lines accepted two workers")
