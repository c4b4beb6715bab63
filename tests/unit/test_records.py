"""The JSON Lines reader: line numbers, blank lines, BOM, CRLF, bad lines, raw bytes."""

from __future__ import annotations

import io
import os
import threading

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.jsonl.reader import CHUNK_SIZE, JsonlReader, LineTooLong, LongLine, iter_items


def read(data: bytes, **kwargs: object) -> list[Record | InvalidLine]:
    return list(iter_items(io.BytesIO(data), **kwargs))  # type: ignore[arg-type]


def test_any_json_value_is_a_record_with_its_line_number() -> None:
    items = read(b'{"id": 1}\n[1, 2]\n"text"\n3.5\nnull\ntrue\n')
    assert all(isinstance(item, Record) for item in items)
    assert [(item.line, item.value) for item in items] == [  # type: ignore[union-attr]
        (1, {"id": 1}),
        (2, [1, 2]),
        (3, "text"),
        (4, 3.5),
        (5, None),
        (6, True),
    ]


def test_blank_lines_yield_nothing_but_count() -> None:
    items = read(b"\n1\n   \n\t\r\n2\n\n")
    assert [(item.line, item.value) for item in items] == [(2, 1), (5, 2)]  # type: ignore[union-attr]


def test_empty_input_yields_nothing() -> None:
    assert read(b"") == []
    assert read(b"\xef\xbb\xbf") == []
    assert read(b"\n\n") == []


def test_bom_at_start_and_crlf_endings_are_accepted() -> None:
    items = read(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n')
    assert [(item.line, item.value) for item in items] == [(1, {"a": 1}), (2, {"a": 2})]  # type: ignore[union-attr]


def test_bom_in_the_middle_is_an_invalid_line() -> None:
    (first, second) = read(b"1\n\xef\xbb\xbf2\n")
    assert isinstance(first, Record)
    assert isinstance(second, InvalidLine)
    assert second.line == 2


def test_bad_json_is_an_invalid_line_with_the_parsers_message() -> None:
    items = read(b'{"id": 1}\n{"id": \n{"id": 3}\n')
    assert [type(item) for item in items] == [Record, InvalidLine, Record]
    bad = items[1]
    assert isinstance(bad, InvalidLine)
    assert bad.line == 2
    assert isinstance(bad.exception, orjson.JSONDecodeError)
    assert str(bad.exception).startswith("unexpected end of data")


def test_bad_utf8_is_a_unicode_decode_error() -> None:
    (bad, good) = read(b'{"name": "caf\xe9"}\n{"name": "caf\xc3\xa9"}\n')
    assert isinstance(bad, InvalidLine)
    assert isinstance(bad.exception, UnicodeDecodeError)
    assert str(bad.exception) == (
        "'utf-8' codec can't decode byte 0xe9 in position 13: invalid continuation byte"
    )
    assert isinstance(good, Record)
    assert good.value == {"name": "café"}


def test_last_line_without_newline_is_read() -> None:
    items = read(b"1\n2")
    assert [item.value for item in items] == [1, 2]  # type: ignore[union-attr]


def test_a_last_line_without_a_line_ending_is_told_before_it_is_handed_over() -> None:
    """A producer may still be writing it: the checkpoint must never mark it finished."""
    told: list[int] = []
    reader = JsonlReader(io.BytesIO(b'{"id": 1}\n\n{"id":'), on_unterminated=told.append)
    items = iter(reader)
    assert next(items).line == 1
    assert (told, reader.unterminated_line) == ([], None)
    last = next(items)
    assert (told, reader.unterminated_line) == ([3], 3)
    assert isinstance(last, InvalidLine) and last.line == 3
    # Parsed or not, a line without its ending is unfinished; one chunk or many.
    for chunk_size in (1, 3, CHUNK_SIZE):
        reader = JsonlReader(io.BytesIO(b"1\r\n2\n3"), chunk_size=chunk_size)
        assert [item.line for item in reader] == [1, 2, 3]
        assert reader.unterminated_line == 3
    # Also for the lines the fused loop reads.
    reader = JsonlReader(io.BytesIO(b"1\n2\n3"), on_unterminated=told.append)
    assert list(reader.iter_line_lists(max_lines=2)) == [[b"1", b"2"], [b"3"]]
    assert (told, reader.unterminated_line) == ([3, 3], 3)


def test_every_line_ended_leaves_no_unterminated_line() -> None:
    for data in (b"", b"1\n", b"1\r\n2\n", b"\xef\xbb\xbf1\n\n"):
        told: list[int] = []
        reader = JsonlReader(io.BytesIO(data), chunk_size=2, on_unterminated=told.append)
        list(reader)
        assert (told, reader.unterminated_line) == ([], None), data


def test_raw_is_the_line_as_read_with_its_ending() -> None:
    data = b'\xef\xbb\xbf{"a": 1}\r\n\nnot json\n  2  \n3'
    items = read(data, keep_raw=True)
    assert [item.raw for item in items] == [
        b'{"a": 1}\r\n',
        b"not json\n",
        b"  2  \n",
        b"3\n",
    ]
    assert [item.line for item in items] == [1, 3, 4, 5]


def test_raw_is_none_unless_asked() -> None:
    assert [item.raw for item in read(b"1\nx\n")] == [None, None]


def test_lines_longer_than_a_chunk_are_joined() -> None:
    big = orjson.dumps({"text": "x" * 10_000})
    data = big + b"\n" + b"1\n" + big
    reader = JsonlReader(io.BytesIO(data), chunk_size=7)
    items = list(reader)
    assert [item.line for item in items] == [1, 2, 3]
    assert items[0].value == {"text": "x" * 10_000}  # type: ignore[union-attr]
    assert reader.bytes_read == len(data)


def test_bytes_read_counts_everything_consumed() -> None:
    data = b"\xef\xbb\xbf1\n\n2\r\n"
    reader = JsonlReader(io.BytesIO(data))
    list(reader)
    assert reader.bytes_read == len(data)


def test_lines_from_a_pipe_are_handed_over_as_they_arrive() -> None:
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb") as stream, open(write_fd, "wb", buffering=0) as sink:
        items = iter_items(stream)
        sink.write(b"1\n2")
        assert next(items).value == 1  # type: ignore[union-attr]
        done = threading.Event()

        def finish() -> None:
            sink.write(b"3\n")
            sink.close()
            done.set()

        threading.Thread(target=finish).start()
        assert next(items).value == 23  # type: ignore[union-attr]
        assert list(items) == []
        assert done.wait(5)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=30),
            st.sampled_from([b"", b" ", b"\r", b"{}", b"[1,", b'"\xff"', b"\xef\xbb\xbf"]),
        ),
        max_size=12,
    ),
    st.booleans(),
    st.integers(min_value=1, max_value=9),
)
def test_any_bytes_give_one_item_per_non_blank_line(
    parts: list[bytes], crlf: bool, chunk_size: int
) -> None:
    data = b"".join(parts)
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    reader = JsonlReader(io.BytesIO(data), keep_raw=True, chunk_size=chunk_size)
    items = list(reader)  # never raises
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    expected = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    assert [(item.line, item.raw) for item in items] == [(n, line + b"\n") for n, line in expected]
    for item, (_, line) in zip(items, expected, strict=True):
        if isinstance(item, Record):
            assert item.value == orjson.loads(line)
        else:
            assert isinstance(item.exception, (orjson.JSONDecodeError, UnicodeDecodeError))
    assert reader.bytes_read == len(data)


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"1", b"[2, 3]", b"", b"  ", b"x", b"\xef\xbb\xbf", b'"abc"']),
            st.integers(min_value=0, max_value=40).map(lambda n: b'"' + b"y" * n + b'"'),
        ),
        max_size=10,
    ),
    st.booleans(),
    st.integers(min_value=1, max_value=9),
    st.integers(min_value=1, max_value=30),
)
def test_a_line_over_max_line_bytes_is_an_invalid_item_at_its_number(
    lines: list[bytes], ended: bool, chunk_size: int, limit: int
) -> None:
    """Whatever the chunks the line is read in: a line over the limit (its line ending
    not counted) is an InvalidLine at its own number, without raw bytes; the others are
    read as without a limit."""
    data = b"\n".join(lines) + (b"\n" if ended and lines else b"")
    reader = JsonlReader(
        io.BytesIO(data), keep_raw=True, chunk_size=chunk_size, max_line_bytes=limit
    )
    items = list(reader)
    unlimited = {item.line: item for item in JsonlReader(io.BytesIO(data), keep_raw=True)}
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    physical = body.split(b"\n")
    if physical and physical[-1] == b"":
        physical.pop()
    expected = [n for n, line in enumerate(physical, 1) if len(line) > limit or line.strip()]
    assert [item.line for item in items] == expected
    assert [item.index for item in items] == list(range(len(expected)))
    for item in items:
        line = physical[item.line - 1]
        if len(line) > limit:
            assert isinstance(item, InvalidLine)
            assert isinstance(item.exception, LineTooLong)
            assert str(item.exception) == f"line longer than {limit} bytes"
            assert item.raw is None
        else:
            other = unlimited[item.line]
            assert type(item) is type(other)
            assert item.raw == other.raw
            if isinstance(item, Record):
                assert item.value == other.value  # type: ignore[union-attr]
    assert reader.bytes_read == len(data)
    if physical and not body.endswith(b"\n"):
        assert reader.unterminated_line == len(physical)


def test_a_long_line_is_never_held_whole() -> None:
    """A line of 10 MB read with a 1 MB limit is handed over as its small stand-in
    alone, never as its bytes (bench/bench_long_line.py measures the memory)."""

    class Stream(io.RawIOBase):
        def __init__(self) -> None:
            self.left = 10_000_000

        def readable(self) -> bool:
            return True

        def read1(self, size: int = -1) -> bytes:
            n = min(size, self.left)
            self.left -= n
            return b"x" * n if n else b""

        read = read1

    stream = Stream()
    reader = JsonlReader(stream, max_line_bytes=1_000_000)  # type: ignore[arg-type]
    held = []
    for lines in reader.iter_line_lists():
        held.extend(len(line) for line in lines)
    assert held == [len(LongLine(1_000_000))]  # only the stand-in of the long line
    assert reader.unterminated_line == 1
    assert reader.bytes_read == 10_000_000
