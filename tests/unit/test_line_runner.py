"""The fused loop of `choreo run` (Coordinator.run_lines) writes what run_many would."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_property import build, tables

from choreo_cli import Coordinator, Result, Skip, Step
from choreo_cli.core.retry import RetryPolicy
from choreo_cli.core.summary import RunSummary
from choreo_cli.jsonl.line_runner import run_lines
from choreo_cli.jsonl.reader import JsonlReader
from choreo_cli.jsonl.writer import ResultWriter

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
        b"".join(writer.encoder.encode(r) for r in results),
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
        out.append(writer.encoder.encode(result))
        if result.status != "succeeded":
            raws.append(result.raw)
        return False

    reader = JsonlReader(io.BytesIO(data))
    counts = list(
        run_lines(
            coordinator,
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


@settings(derandomize=True, database=None, max_examples=100, deadline=None)
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


def summary_of(coordinator: Coordinator, data: bytes, *, max_lines: int | None) -> Any:
    """(lines, summary counts, per-step counts) of run_many (``max_lines`` None) or of
    run_lines with a tally, as `choreo run` feeds them."""
    summary = RunSummary([step.name for step in coordinator.steps])
    writer = ResultWriter(io.BytesIO())
    if max_lines is None:
        results = list(coordinator.run_many(JsonlReader(io.BytesIO(data))))
        out = [writer.encoder.encode(result) for result in results]
        for result in results:
            summary.add(result)
    else:
        clean_line = writer.clean_line(coordinator.clean_steps())
        assert clean_line is not None
        out = []
        tallied: list[Result] = []

        def emit(result: Result) -> bool:
            out.append(writer.encoder.encode(result))
            summary.add(result)
            return False

        def tally(result: Result) -> None:
            tallied.append(result)
            summary.add(result)

        for clean in run_lines(
            coordinator,
            JsonlReader(io.BytesIO(data)).iter_line_lists(max_lines=max_lines),
            clean_line=clean_line,
            put=out.append,
            emit=emit,
            tally=tally,
        ):
            summary.add_clean(clean, coordinator.clean_steps())
        # A tallied record stands for its pattern: its line is written, not emitted.
        assert all(r.status == "succeeded" and r.errors for r in tallied)
    writer.close()
    return b"".join(out), summary.counts, summary.steps


@settings(derandomize=True, database=None, max_examples=100, deadline=None)
@given(tables, LINES, st.sampled_from([1, 2, 1024]), st.booleans())
def test_run_lines_with_a_tally_writes_and_counts_what_run_many_does(
    table: Any, lines: list[bytes], max_lines: int, dry_run: bool
) -> None:
    """With a tally (as `choreo run` gives), records whose prechecks skipped jobs are
    written from a template per pattern: the same bytes and counts as run_many."""
    data = b"\n".join(lines) + b"\n"
    calls: list[tuple[str, str]] = []

    def make() -> Coordinator:
        coordinator = Coordinator(dry_run=dry_run)
        for step in build(table, calls).steps:
            coordinator.add_step(step)
        return coordinator

    expected = summary_of(make(), data, max_lines=None)
    expected_calls = list(calls)
    calls.clear()
    assert summary_of(make(), data, max_lines=max_lines) == expected
    assert calls == expected_calls


class Exists(Exception):
    pass


@pytest.mark.parametrize("max_lines", [1, 3, 1024])
def test_skipped_records_lines_carry_each_records_own_message(max_lines: int) -> None:
    """The template per pattern takes each record's messages (quotes, %, non-ASCII, a
    lone surrogate that takes the general path) and the pattern of each record (a
    precheck that raised another exception than Skip, a retried job: the general path)."""

    def message(record: Any) -> str:
        # JSON input cannot hold a lone surrogate: str() of a message can.
        return record["message"].replace("SURROGATE", "\udc80")

    def first(ctx: Any, record: Any) -> None:
        if record["skip"] in ("first", "both", "first, other"):
            raise Skip(message(record))

    def second(ctx: Any, record: Any) -> None:
        if record["skip"] == "second" or record["skip"] == "both":
            raise Skip(f"second: {message(record)}")
        if record["skip"] in ("other", "first, other"):
            raise Exists("it exists")

    tries: dict[int, int] = {}

    def flaky(ctx: Any, record: Any) -> int:
        # Every fourth record's job fails once, then succeeds: a line with "attempts"
        # (records 0, 12, 24...: the first job skipped, as in records 6, 18...).
        tries[ctx.index] = tries.get(ctx.index, 0) + 1
        if ctx.index % 4 == 0 and tries[ctx.index] == 1:
            raise ConnectionError("once")
        return 2

    def make() -> Coordinator:
        tries.clear()
        coordinator = Coordinator()
        coordinator.add_step(Step(name="first %d step", precheck=first, job=lambda c, r: 1))
        coordinator.add_step(
            Step(name="second", precheck=second, job=flaky, retry=RetryPolicy(attempts=2))
        )
        return coordinator

    messages = ['a "quoted" one', "100% %s %d", "ünïcödé ✓", "lone SURROGATE one", ""]
    kinds = ["first", "second", "both", "none", "other", "first, other"]
    records = [
        orjson.dumps({"skip": kinds[i % 6], "message": messages[i % 4 if i % 7 else 4]})
        for i in range(72)
    ]
    data = b"\n".join(records) + b"\n"
    expected = summary_of(make(), data, max_lines=None)
    assert b"100% %s %d" in expected[0] and b"lone " in expected[0]
    assert b'"attempts":{"second":2}' in expected[0]
    assert summary_of(make(), data, max_lines=max_lines) == expected


def test_the_clean_count_comes_after_each_list_and_numbers_carry_on() -> None:
    coordinator = Coordinator()
    coordinator.add_step(Step(name="echo", job=lambda ctx, record: (ctx.index, ctx.line)))
    seen: list[Any] = []
    out: list[bytes] = []
    counts = list(
        run_lines(
            coordinator,
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
        run_lines(
            coordinator,
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
        run_lines(
            coordinator,
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
    coordinator.interrupt("again")
    assert (
        list(run_lines(coordinator, [[b"9"]], clean_line=b"", put=out.append, emit=emitted.append))
        == []
    )


def test_run_lines_needs_one_worker() -> None:
    coordinator = Coordinator(workers=2)
    try:
        run_lines(coordinator, [], clean_line=b"", put=print, emit=print)
    except ValueError as exc:
        assert "workers == 1" in str(exc)
    else:
        raise AssertionError("run_lines accepted two workers")
