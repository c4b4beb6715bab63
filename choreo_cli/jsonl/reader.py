"""JSON Lines input: stream a binary file into ``Record`` and ``InvalidLine`` items."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import orjson

from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.jsonl.numbers import WideLines, loads_for, wide_lines

_BOM = b"\xef\xbb\xbf"
# Large enough that splitting is done in C on many lines at once; small enough to keep
# memory flat and to hand lines over as soon as a slow producer (a pipe) delivers them.
CHUNK_SIZE = 256 * 1024
# A longer line is not held in memory: it becomes an invalid item (--max-line-bytes).
MAX_LINE_BYTES = 64 * 1024 * 1024


class LineTooLong(ValueError):
    """Why an input line longer than the reader's limit is ``invalid``: its bytes were
    skipped as they were read, never held in memory.

    >>> str(LineTooLong(100))
    'line longer than 100 bytes'
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"line longer than {limit} bytes")
        self.limit = limit

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.limit,))


class LongLine(bytes):
    """What the reader hands over in place of a line longer than its limit: a few bytes
    that are not JSON (not even UTF-8), so every parser sends it down the invalid-line
    path, where ``invalid_line`` knows it by its type and makes its ``LineTooLong``.
    Only the reader's own lists hold it: a worker process that gets its bytes finds
    them invalid, and the parent makes the item from its own list.
    """

    limit: int

    def __new__(cls, limit: int) -> LongLine:
        marker = super().__new__(cls, b"\xff<line longer than %d bytes>" % limit)
        marker.limit = limit
        return marker


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

    A line longer than ``max_line_bytes`` (its line ending not counted) is an
    ``InvalidLine`` (``LineTooLong``, no ``raw``) at its own line number: its bytes are
    dropped as they arrive, so memory stays bounded by the limit whatever the input
    (an endless line, ``/dev/zero``, is read for ever in bounded memory).

    A last line without a line ending (a producer may still be writing it) is read like
    any other; its number is ``unterminated_line``, set (and ``on_unterminated`` called
    with it) before the line is handed over, so before any result of it exists.

    Examples:
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
        max_line_bytes: int = MAX_LINE_BYTES,
        on_unterminated: Callable[[int], None] | None = None,
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be at least 1, not {max_line_bytes}")
        self._stream = stream
        self._keep_raw = keep_raw
        self._chunk_size = chunk_size
        self._max_line_bytes = max_line_bytes
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
        (``unterminated_line`` set first). A line longer than the limit is a ``LongLine``."""
        limit = self._max_line_bytes
        pending: list[bytes] = []  # the start of a line whose end has not arrived
        size = 0  # its length
        skipping = False  # the line being read is over the limit: its bytes are dropped
        complete = 0  # lines yielded so far
        for chunk in self._iter_chunks():
            if b"\n" not in chunk:
                # Part of a long line: joined once when its end arrives (no quadratic copy).
                if not skipping:
                    size += len(chunk)
                    if size > limit:
                        pending = []
                        skipping = True
                    else:
                        pending.append(chunk)
                continue
            lead: list[bytes] = []
            if skipping or (pending and size + chunk.index(b"\n") > limit):
                # The end of a line over the limit: never joined, never held whole.
                lead.append(LongLine(limit))
                chunk = chunk[chunk.index(b"\n") + 1 :]
                pending = []
                skipping = False
            elif pending:
                pending.append(chunk)
                chunk = b"".join(pending)
                pending = []
            size = 0
            lines = chunk.split(b"\n")
            tail = lines.pop()
            if len(chunk) > limit:
                # Only then can a line of the chunk be over the limit. With the default
                # limit (far above CHUNK_SIZE) only a chunk joined to a pending line of
                # nearly the limit gets here: a check per chunk, none per line.
                lines = [line if len(line) <= limit else LongLine(limit) for line in lines]
                if len(tail) > limit:
                    tail = b""
                    skipping = True
            if tail:
                pending.append(tail)
                size = len(tail)
            if lead:
                lines[:0] = lead
            complete += len(lines)
            if lines:
                yield wide_lines(chunk, lines)
        if pending or skipping:
            self.unterminated_line = complete + 1
            if self._on_unterminated is not None:
                self._on_unterminated(complete + 1)
            last = LongLine(limit) if skipping else b"".join(pending)
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
                    yield invalid_line(number, line, exc, keep_raw, index)
                    continue
                index += 1
                # Record(...) without calling __init__: a third of the cost per line.
                record = new_record(Record)
                record.value = value
                record.line = number
                record.raw = line + b"\n" if keep_raw else None
                record.index = index
                yield record


def invalid_line(
    number: int, line: bytes, exc: orjson.JSONDecodeError, keep_raw: bool, index: int
) -> InvalidLine:
    """The item of input line ``number`` (``line``, without its line ending), which the
    parser refused with ``exc``: its ``raw`` is the line as read when ``keep_raw``, but
    for a ``LongLine``, whose bytes were not kept (its reason says so).

    >>> item = invalid_line(3, LongLine(10), orjson.JSONDecodeError("x", "", 0), True, 1)
    >>> item.line, str(item.exception), item.raw
    (3, 'line longer than 10 bytes', None)
    """
    if type(line) is LongLine:
        return InvalidLine(number, LineTooLong(line.limit), None, index)
    return InvalidLine(number, reason_for(line, exc), line + b"\n" if keep_raw else None, index)


def reason_for(line: bytes, exc: orjson.JSONDecodeError) -> Exception:
    """The exception that explains why ``line`` is not JSON: too long, bad UTF-8, then syntax."""
    if type(line) is LongLine:
        return LineTooLong(line.limit)
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as unicode_error:
        return unicode_error
    return exc


def iter_items(
    stream: BinaryIO, *, keep_raw: bool = False, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Record | InvalidLine]:
    """Yield one ``Record`` or ``InvalidLine`` per non-blank line of a binary JSONL stream.

    >>> import io
    >>> [item.line for item in iter_items(io.BytesIO(b'1\\n\\n"x"\\r\\n'))]
    [1, 3]
    """
    return iter(JsonlReader(stream, keep_raw=keep_raw, max_line_bytes=max_line_bytes))


def cut_after_record(lists: Iterable[list[bytes]], count: int) -> Iterator[list[bytes]]:
    """``lists`` of lines (``iter_line_lists``) with the one that holds the ``count``-th
    record (non-blank line) cut right after it, so that a list ends there; the others as
    they are. Lines are only looked at until then.

    >>> list(cut_after_record([[b"1", b"", b"2", b"3"], [b"4"]], 2))
    [[b'1', b'', b'2'], [b'3'], [b'4']]
    """
    iterator = iter(lists)
    left = count
    for lines in iterator:
        if left <= 0:
            yield lines
            break
        for position, data in enumerate(lines):
            if data.strip():
                left -= 1
                if left == 0:
                    wide = type(lines) is WideLines
                    head, tail = lines[: position + 1], lines[position + 1 :]
                    yield WideLines(head) if wide else head
                    if tail:
                        yield WideLines(tail) if wide else tail
                    break
        else:
            yield lines
            continue
        break
    yield from iterator
