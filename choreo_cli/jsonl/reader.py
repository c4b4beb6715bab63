"""JSON Lines input: stream a binary file into ``Record`` and ``InvalidLine`` items."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

import orjson

from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.jsonl.numbers import WideLines, loads_for, wide_lines

_BOM = b"\xef\xbb\xbf"
# Large enough that splitting is done in C on many lines at once; small enough to keep
# memory flat and to hand lines over as soon as a slow producer (a pipe) delivers them.
CHUNK_SIZE = 256 * 1024


class JsonlReader:
    """Iterate over the items of a UTF-8 JSON Lines stream opened in binary mode.

    Each non-blank line yields a ``Record`` (any JSON value) or, when it is not valid
    UTF-8 or not valid JSON, an ``InvalidLine`` carrying the parser's exception: a
    ``UnicodeDecodeError`` for bytes that are not UTF-8 (orjson's own message for those
    is misleading), else the ``orjson.JSONDecodeError``. Blank lines (ASCII whitespace
    only) yield nothing but count: ``line`` is the 1-based physical line number. A UTF-8
    BOM at the start and CRLF endings are accepted. With ``keep_raw`` each item's
    ``raw`` is the line's bytes as read, line ending included (``b"\\n"`` added to a last
    line without one; the BOM is not part of the first line). ``bytes_read`` counts the
    bytes consumed so far, for a progress bar.

    A last line without a line ending (a producer may still be writing it) is read like
    any other; its number is ``unterminated_line``, set (and ``on_unterminated`` called
    with it) before the line is handed over, so before any result of it exists.

    >>> import io
    >>> [item.value for item in JsonlReader(io.BytesIO(b'{"id": 1}\\n\\n[2]\\n'))]
    [{'id': 1}, [2]]
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        keep_raw: bool = False,
        chunk_size: int = CHUNK_SIZE,
        on_unterminated: Callable[[int], None] | None = None,
    ) -> None:
        self._stream = stream
        self._keep_raw = keep_raw
        self._chunk_size = chunk_size
        self._on_unterminated = on_unterminated
        self.bytes_read = 0
        self.unterminated_line: int | None = None

    def __iter__(self) -> Iterator[Record | InvalidLine]:
        return self._iter_items()

    def _iter_chunks(self) -> Iterator[bytes]:
        # read1 returns what is available (one system call at most): lines from a pipe
        # are handed over as they arrive instead of waiting for a full chunk.
        read = getattr(self._stream, "read1", self._stream.read)
        size = self._chunk_size
        first = b""
        while len(first) < len(_BOM):
            data = read(size)
            if not data:
                break
            self.bytes_read += len(data)
            first += data
        if first.startswith(_BOM):
            first = first[len(_BOM) :]
        if first:
            yield first
        while True:
            data = read(size)
            if not data:
                return
            self.bytes_read += len(data)
            yield data

    def iter_line_lists(self, *, max_lines: int = 1024) -> Iterator[list[bytes]]:
        """Yield the stream's lines (bytes, without ``\\n``; blank ones included, so a
        line's number is its position) in lists of at most ``max_lines``.

        This is what ``choreo_cli.jsonl.line_runner.run_lines`` reads: it parses the lines itself.
        A list cut from a chunk that holds a run of 20 digits (or a minus and 19) is a
        ``WideLines``: its lines may hold integers past 64 bits, which orjson reads as
        floats, so they are parsed with ``choreo_cli.jsonl.numbers.loads_exact``.
        """
        for lines in self._iter_lines():
            if len(lines) <= max_lines:
                yield lines
                continue
            wide = type(lines) is WideLines
            for start in range(0, len(lines), max_lines):
                part = lines[start : start + max_lines]
                yield WideLines(part) if wide else part

    def _iter_lines(self) -> Iterator[list[bytes]]:
        """Yield lists of complete lines without their ``\\n``; a last unterminated line too
        (``unterminated_line`` set first)."""
        pending: list[bytes] = []
        complete = 0  # lines yielded so far
        for chunk in self._iter_chunks():
            if b"\n" not in chunk:
                # Part of a long line: joined once when its end arrives (no quadratic copy).
                pending.append(chunk)
                continue
            if pending:
                pending.append(chunk)
                chunk = b"".join(pending)
                pending = []
            lines = chunk.split(b"\n")
            tail = lines.pop()
            if tail:
                pending.append(tail)
            complete += len(lines)
            yield wide_lines(chunk, lines)
        if pending:
            self.unterminated_line = complete + 1
            if self._on_unterminated is not None:
                self._on_unterminated(complete + 1)
            last = b"".join(pending)
            yield wide_lines(last, [last])

    def _iter_items(self) -> Iterator[Record | InvalidLine]:
        decode_error = orjson.JSONDecodeError
        new_record = object.__new__
        keep_raw = self._keep_raw
        number = 0
        index = -1  # every non-blank line is a record, numbered from 0
        for lines in self._iter_lines():
            loads = loads_for(lines)  # exact for integers past 64 bits (WideLines)
            # The happy path is one orjson call; blank and bad lines are sorted out
            # only when it fails, so they cost nothing on the lines that parse.
            for number, line in enumerate(lines, number + 1):  # noqa: B020 - carries on
                try:
                    value = loads(line)
                except decode_error as exc:
                    if not line.strip():
                        continue
                    index += 1
                    yield InvalidLine(
                        number, reason_for(line, exc), line + b"\n" if keep_raw else None, index
                    )
                    continue
                index += 1
                # Record(...) without calling __init__: a third of the cost per line.
                record = new_record(Record)
                record.value = value
                record.line = number
                record.raw = line + b"\n" if keep_raw else None
                record.index = index
                yield record


def reason_for(line: bytes, exc: orjson.JSONDecodeError) -> Exception:
    """The exception that explains why ``line`` is not JSON: bad UTF-8 first, then syntax."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as unicode_error:
        return unicode_error
    return exc


def iter_items(stream: BinaryIO, *, keep_raw: bool = False) -> Iterator[Record | InvalidLine]:
    """Yield one ``Record`` or ``InvalidLine`` per non-blank line of a binary JSONL stream.

    >>> import io
    >>> [item.line for item in iter_items(io.BytesIO(b'1\\n\\n"x"\\r\\n'))]
    [1, 3]
    """
    return iter(JsonlReader(stream, keep_raw=keep_raw))
