"""`choreo run --rejects PATH`: the input lines of the records that did not succeed."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from choreo_cli.core.result import Result


class Rejects:
    """The input lines of records that did not succeed, in input order (re-runnable).

    A write error (disk full) is kept in ``error``, not raised: the run goes on and the
    exit code says so. A record without its line's bytes (a line longer than
    ``--max-line-bytes``, whose bytes were never kept) cannot be written: it is counted
    in ``left_out`` (the first one's line number in ``first_left_out``), for a warning.
    """

    def __init__(self, path: Path, *, ordered: bool) -> None:
        self.path = path
        self.error: OSError | None = None
        self._created = not os.path.lexists(path)
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._ordered = ordered
        self._held: list[tuple[int, bytes]] = []
        self.left_out = 0
        self.first_left_out: int | None = None

    def add(self, result: Result) -> None:
        """Keep ``result``'s input line (results of the same run, any order)."""
        raw = result.raw
        if raw is None:
            self.left_out += 1
            line = result.line
            if line is not None and (self.first_left_out is None or line < self.first_left_out):
                self.first_left_out = line
            return
        if self.error is not None:
            return
        if self._ordered:
            self._write(raw)
        else:
            self._held.append((result.index, raw))

    def _write(self, raw: bytes) -> None:
        try:
            self._file.write(raw)
        except OSError as exc:
            self.error = exc

    def close(self) -> None:
        """Write the lines held back (in input order) and close the file."""
        for _, raw in sorted(self._held):
            if self.error is not None:
                break
            self._write(raw)
        self._held.clear()
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or exc

    def discard(self) -> None:
        """Close the file, and remove it if this run made it: the run ends before any
        record (exit 2)."""
        self.close()
        if self._created:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
