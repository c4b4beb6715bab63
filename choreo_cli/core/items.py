"""Input items: what a reader hands the coordinator besides plain record values."""

from __future__ import annotations

from typing import Any


class Record:
    """A record read from an input line: its JSON value, 1-based line number and raw bytes.

    >>> Record({"id": 1}, 3).line
    3
    """

    __slots__ = ("index", "line", "raw", "value")

    def __init__(
        self, value: Any, line: int | None, raw: bytes | None = None, index: int | None = None
    ) -> None:
        self.value = value
        self.line = line
        self.raw = raw
        # The record's number in its input (0-based, every non-blank line counts), so a
        # resumed run keeps the numbers of the first; None: numbered by the coordinator.
        self.index = index


class InvalidLine:
    """An input line that could not be read as JSON: it becomes an ``invalid`` result."""

    __slots__ = ("exception", "index", "line", "raw")

    def __init__(
        self,
        line: int,
        exception: BaseException,
        raw: bytes | None = None,
        index: int | None = None,
    ) -> None:
        self.line = line
        self.exception = exception
        self.raw = raw
        self.index = index
