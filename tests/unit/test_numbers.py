"""Integers of any size stay exact: the wide-digit check of a chunk, the exact parser, the
writing of such integers, and every path that reads input lines (the reader, the fused
loop and its reference, the process and Dask workers' parsing) against ``json.loads``.

orjson reads an integer past the 64-bit range as a float (or refuses it past ~309
digits): each path must give the standard library's exact int instead.
"""

from __future__ import annotations

import io
import json
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_cli import Coordinator, Step
from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.executors.base import PipelineSpec
from choreo_cli.executors.batching import LineItems
from choreo_cli.executors.runner import BatchRunner
from choreo_cli.jsonl.line_runner import run_lines
from choreo_cli.jsonl.lines import dump_input, dump_value
from choreo_cli.jsonl.numbers import WideLines, has_wide_digits, loads_exact
from choreo_cli.jsonl.reader import JsonlReader
from choreo_cli.jsonl.writer import ResultWriter

RECORD = b'{"id": 12345678901234567890123, "n": -98765432109876543210}'


# -- the chunk check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "wide"),
    [
        (b"9223372036854775807", False),  # 2**63 - 1: 19 digits
        (b"9999999999999999999", False),  # 19 digits: below 2**64, orjson's int
        (b"-922337203685477580", False),  # a minus and 18 digits
        (b"-9223372036854775808", True),  # -2**63 itself: a minus and 19 digits (harmless)
        (b"-9223372036854775809", True),  # below -2**63
        (b"18446744073709551615", True),  # 2**64 - 1: 20 digits (harmless)
        (b"18446744073709551616", True),  # 2**64
        (b'{"a": [1, 2, 12345678901234567890123]}', True),
        (b'{"id": "12345678901234567890"}', True),  # inside a string: parsed exactly, same value
        (b"1234567890.1234567890", False),  # two runs of 10
        (b"1234567890123456789-1", False),  # a run of 19 and a minus after it
        (b"", False),
    ],
)
def test_a_wide_run_is_20_digits_or_a_minus_and_19(data: bytes, wide: bool) -> None:
    assert has_wide_digits(data) is wide
    assert has_wide_digits(b"[0, " + data + b", 0]") is wide


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(st.integers(min_value=-(10**18) + 1, max_value=10**19 - 1))
def test_orjson_reads_every_integer_without_a_wide_run_exactly(number: int) -> None:
    """The premise of the check: what it lets through, orjson reads as it is."""
    text = str(number).encode()
    assert not has_wide_digits(text)
    value = orjson.loads(text)
    assert type(value) is int and value == number


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(st.one_of(st.integers(min_value=2**64), st.integers(max_value=-(2**63) - 1)))
def test_every_integer_orjson_cannot_hold_has_a_wide_run(number: int) -> None:
    assert has_wide_digits(str(number).encode())


# -- the exact parser -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        RECORD,
        b"-9223372036854775809",
        b"[18446744073709551616, -18446744073709551617, 1.5, 1e300, -0.0, 0]",
        b'{"deep": [[{"x": ' + b"9" * 400 + b'}]], "s": "\\u00e9\\ud83d\\ude00"}',
        b'"12345678901234567890"',
        b"  12345678901234567890123\r",
        b"[" + b"7" * 4300 + b"]",
    ],
)
def test_the_exact_parser_gives_what_json_gives(text: bytes) -> None:
    assert repr(loads_exact(text)) == repr(json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        b"[12345678901234567890123, NaN]",
        b"[12345678901234567890123, Infinity]",
        b"[" + b"9" * 400 + b", -Infinity]",
        b"[12345678901234567890123, 1e400]",
        b"[" + b"9" * 400 + b", 1e400]",
        b'[12345678901234567890123, "\\ud800"]',  # a lone surrogate
        b'["\\udc00", ' + b"9" * 400 + b"]",
        b'[12345678901234567890123, "\xff"]',  # not UTF-8
        b'[12345678901234567890123, "\xed\xa0\x80"]',  # an encoded surrogate
        b"[12345678901234567890123 1]",
        b"[12345678901234567890123,]",
        b"[012345678901234567890123]",
        b"[" + b"7" * 4301 + b"]",  # past Python's int conversion: never a float
    ],
)
def test_the_exact_parser_refuses_what_orjson_refuses(text: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        loads_exact(text)


def test_an_integer_past_pythons_conversion_limit_says_so() -> None:
    with pytest.raises(orjson.JSONDecodeError, match="integer too long to read exactly"):
        loads_exact(b"[" + b"7" * (sys.get_int_max_str_digits() + 1) + b"]")


# -- writing them ---------------------------------------------------------------------------


def test_integers_past_64_bits_are_written_as_numbers() -> None:
    value = {"id": 2**70, "n": [-(2**63) - 1, 2**64], 10**30: "key", "small": 1}
    assert json.loads(dump_value(value)) == {
        "id": 2**70,
        "n": [-(2**63) - 1, 2**64],
        str(10**30): "key",
        "small": 1,
    }
    assert b"1180591620717411303424" in dump_value(value)


def test_the_input_is_its_line_when_orjson_cannot_write_the_record() -> None:
    assert dump_input(json.loads(RECORD), RECORD + b"\r\n") == RECORD
    # Tabs and CRs between tokens become spaces: no control character reaches the output.
    tabbed = b'{\t"id":\r12345678901234567890123}'
    assert (
        dump_input(json.loads(tabbed), b" " + tabbed + b"\t\n")
        == b'{ "id": 12345678901234567890123}'
    )
    deep: Any = 1
    for _ in range(400):  # orjson reads 1024 levels, writes 254
        deep = [deep]
    line = json.dumps(deep).encode()
    assert dump_input(orjson.loads(line), line) == line
    # Every line is written as it was read (its spacing too), not re-encoded.
    assert dump_input({"id": 1}, b'{ "id" : 1 }') == b'{ "id" : 1 }'
    assert dump_input({"id": 2**70}, None) == b'{"id":1180591620717411303424}'


# -- every path that reads lines ------------------------------------------------------------


def wide_integers() -> st.SearchStrategy[int]:
    boundaries = [2**63 - 1, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**19, -(10**19)]
    return st.one_of(
        st.integers(),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.integers(min_value=10**300, max_value=10**320),  # orjson refuses these
        st.sampled_from(boundaries),
    )


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | wide_integers()
    | st.text(max_size=8)
    | st.sampled_from(["12345678901234567890123", "-98765432109876543210"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def json_lines(draw: st.DrawFn) -> list[bytes]:
    values = draw(st.lists(JSON, max_size=12))
    lines = []
    for value in values:
        compact = draw(st.booleans())
        text = json.dumps(
            value,
            ensure_ascii=draw(st.booleans()),
            separators=(",", ":") if compact else None,
        )
        lines.append(text.encode())
    return lines


def expected(lines: list[bytes]) -> list[str]:
    return [repr(json.loads(line)) for line in lines]


def read_items(data: bytes, chunk_size: int) -> list[str]:
    items = list(JsonlReader(io.BytesIO(data), chunk_size=chunk_size))
    assert all(type(item) is Record for item in items)
    return [repr(item.value) for item in items]  # type: ignore[union-attr]


def through_run_lines(data: bytes, chunk_size: int, max_lines: int) -> list[str]:
    seen: list[str] = []
    coordinator = Coordinator()
    coordinator.add_step(Step(name="see", job=lambda ctx, record: seen.append(repr(record))))
    writer = ResultWriter(io.BytesIO())
    clean_line = writer.clean_line(coordinator.clean_steps())
    assert clean_line is not None
    emitted: list[Any] = []
    reader = JsonlReader(io.BytesIO(data), chunk_size=chunk_size)
    batches = reader.iter_line_lists(max_lines=max_lines)
    for _ in run_lines(
        coordinator, batches, clean_line=clean_line, put=lambda line: None, emit=emitted.append
    ):
        pass
    coordinator.close()
    assert emitted == []
    return seen


STEPS = """\
def see(ctx, record):
    raise ValueError(repr(record))
"""

PIPELINE = """\
version: 1
steps:
  - name: see
    job: wide_numbers_steps:see
"""


@pytest.fixture(scope="module")
def batch_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchRunner]:
    """A process or Dask worker's runner, here: its step fails with repr(record)."""
    root = tmp_path_factory.mktemp("wide")
    (root / "wide_numbers_steps.py").write_text(STEPS, encoding="utf-8")
    path = root / "pipeline.yaml"
    path.write_text(textwrap.dedent(PIPELINE), encoding="utf-8")
    runner = BatchRunner(PipelineSpec.for_file(path))
    yield runner
    assert runner.close() == []


def worker_reads(runner: BatchRunner, lines: list[bytes], *, general: bool) -> list[str]:
    """What the worker's step saw of each line: by its line path, or its general one."""
    data = b"\n".join(lines)
    numbers = range(1, len(lines) + 1)
    if general:
        batch: Any = (0, list(range(len(lines))), data, list(numbers))
    else:
        batch = (0, None, data, numbers)
    _, _, _, others = runner.run(batch)
    messages = []
    for _, payload in others:
        status, error = payload[4], payload[5]
        assert status == "failed", payload
        messages.append(error[2][2])
    return messages


@settings(derandomize=True, database=None, max_examples=150, deadline=None)
@given(json_lines(), st.sampled_from([1, 3, 16, 64, 1 << 18]), st.sampled_from([1, 2, 1024]))
def test_every_reader_path_gives_what_json_gives(
    batch_runner: BatchRunner, lines: list[bytes], chunk_size: int, max_lines: int
) -> None:
    data = b"".join(line + b"\n" for line in lines)
    want = expected(lines)
    assert read_items(data, chunk_size) == want
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CHOREO_RUNNER", raising=False)
        assert through_run_lines(data, chunk_size, max_lines) == want
        patch.setenv("CHOREO_RUNNER", "interpreted")
        assert through_run_lines(data, chunk_size, max_lines) == want
    if lines:
        assert worker_reads(batch_runner, lines, general=False) == want
        assert worker_reads(batch_runner, lines, general=True) == want
        items = LineItems(lines, range(1, len(lines) + 1), 0, False)
        assert [repr(items[k].value) for k in range(len(lines))] == want


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 11, 19, 20, 21, 23, 64, 1 << 18])
def test_wide_runs_across_chunk_boundaries(chunk_size: int) -> None:
    """The reader joins a line's pieces before the check: a run cut by a chunk's end is seen."""
    lines = [b'{"a": 1}', RECORD, b"[1, 2]", b'"' + b"x" * 17 + b'"', b"-9223372036854775809"]
    lines += [b"[" + b"1" * 25 + b"]", b"7"]
    data = b"\n".join(lines) + b"\n"
    assert read_items(data, chunk_size) == expected(lines)
    marked = []
    for batch in JsonlReader(io.BytesIO(data), chunk_size=chunk_size).iter_line_lists():
        for line in batch:
            if has_wide_digits(line):
                marked.append(type(batch) is WideLines)
    assert marked == [True, True, True]  # RECORD, below -2**63, 25 digits


def test_a_chunk_without_a_wide_run_is_a_plain_list() -> None:
    """The common case pays nothing per line: a plain list, parsed by orjson alone."""
    data = b"".join(b'{"id": %d, "amount": %d.5}\n' % (i, i * 10**12) for i in range(5000))
    batches = list(JsonlReader(io.BytesIO(data)).iter_line_lists())
    assert len(batches) > 1
    assert {type(batch) for batch in batches} == {list}
    wide = data + RECORD + b"\n"
    types = [type(batch) for batch in JsonlReader(io.BytesIO(wide)).iter_line_lists()]
    assert types[-1] is WideLines  # the slices of a marked chunk stay marked


@pytest.mark.parametrize(
    "line",
    [b"[12345678901234567890123, NaN]", b"[" + b"9" * 400 + b", 1e400]", b'[1e400, "\\ud800"]'],
)
def test_every_reader_path_refuses_what_orjson_refuses(
    batch_runner: BatchRunner, line: bytes
) -> None:
    data = line + b"\n"
    (item,) = JsonlReader(io.BytesIO(data))
    assert type(item) is InvalidLine
    results: list[Any] = []
    coordinator = Coordinator()
    coordinator.add_step(Step(name="see", job=lambda ctx, record: None))
    for _ in run_lines(
        coordinator,
        JsonlReader(io.BytesIO(data)).iter_line_lists(),
        clean_line=b"%d %d",
        put=lambda line: None,
        emit=results.append,
    ):
        pass
    coordinator.close()
    assert [result.status for result in results] == ["invalid"]
    _, _, _, others = batch_runner.run((0, None, line, range(1, 2)))
    assert [payload[4] for _, payload in others] == ["invalid"]
    assert type(LineItems([line], [1], 0, False)[0]) is InvalidLine


def test_a_step_annotated_int_accepts_an_integer_past_64_bits() -> None:
    seen: list[int] = []

    def see(ctx: Any, record: int) -> None:
        seen.append(record)

    coordinator = Coordinator()
    coordinator.add_step(Step(name="see", job=see))
    items = list(JsonlReader(io.BytesIO(b"1180591620717411303424\n-1180591620717411303424\n")))
    results = list(coordinator.run_many(items))
    coordinator.close()
    assert [result.status for result in results] == ["succeeded", "succeeded"]
    assert seen == [2**70, -(2**70)]
