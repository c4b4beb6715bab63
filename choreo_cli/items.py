"""Input items: what a reader hands the coordinator besides plain record values."""

from __future__ import annotations

from typing import Any


class Record:
    """A record read from an input line: its JSON value, 1-based line number and raw bytes.

    >>> Record({"id": 1}, 3).line
    3
    """

    __slots__ = ("line", "raw", "value")

    def __init__(self, value: Any, line: int | None, raw: bytes | None = None) -> None:
        self.value = value
        self.line = line
        self.raw = raw


class InvalidLine:
    """An input line that could not be read as JSON: it becomes an ``invalid`` result."""

    __slots__ = ("exception", "line", "raw")

    def __init__(self, line: int, exception: BaseException, raw: bytes | None = None) -> None:
        self.line = line
        self.exception = exception
        self.raw = raw
