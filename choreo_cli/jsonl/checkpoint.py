"""`--checkpoint`: an append-only file of finished input lines, so a rerun resumes.

The file starts with a fingerprint line: the pipeline file's content and the first
min(size, 64 KiB) bytes of the input as they were. Each later line lists input line
numbers (``1-4096 4098``) whose result lines were written *and flushed* to the output:
the checkpoint never claims a record the output does not have. A line cut short by a
crash is ignored, so its records run again (they were in flight). A last input line
without a line ending is never marked: a producer may still be writing it, and the rerun
reads it again once it is complete.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from choreo_cli.errors import ChoreoError, Interrupted

MAGIC = "choreo-checkpoint 1"
PREFIX_BYTES = 64 * 1024


class CheckpointError(ChoreoError):
    """The checkpoint cannot be used (another pipeline or input, unreadable, damaged)."""


def fingerprint(
    pipeline: Path, input_path: Path, prefix: int | None = None
) -> tuple[str, int, str]:
    """(pipeline sha256, prefix length, input prefix sha256); ``prefix`` defaults to 64 KiB
    or the input's size if smaller."""
    pipeline_hash = hashlib.sha256(pipeline.read_bytes()).hexdigest()
    with open(input_path, "rb") as f:
        data = f.read(PREFIX_BYTES) if prefix is None else f.read(prefix)
    return pipeline_hash, len(data), hashlib.sha256(data).hexdigest()


class Checkpoint:
    """Which input lines are finished, and the file that records more of them.

    >>> # checkpoint = Checkpoint.open(Path("run.ckpt"), pipeline=..., input_path=...)
    >>> # items = checkpoint.skip_finished(reader, on_skip=...)
    """

    def __init__(
        self, path: Path, done: list[tuple[int, int]], stream: Any, *, created: bool = False
    ) -> None:
        self.path = path
        #: True when this run made the file (there was none at ``path``).
        self.created = created
        self._starts = [start for start, _ in done]
        self._ends = [end for _, end in done]
        self._stream = stream
        # The number of a last input line without a line ending, once the reader saw one.
        self._unfinished: int | None = None

    @classmethod
    def open(cls, path: Path, *, pipeline: Path, input_path: Path) -> Checkpoint:
        """Read an existing checkpoint (checking its fingerprint) or start a new one."""
        try:
            regular = stat.S_ISREG(os.stat(input_path).st_mode)
        except OSError as exc:
            raise CheckpointError(f"cannot read input {input_path}: {exc.strerror}") from None
        if not regular:
            # A pipe (-i <(zcat ...)) cannot be read again on a rerun, and reading its first
            # bytes for the fingerprint would take them from the run.
            raise CheckpointError(
                f"--checkpoint needs --input FILE: {input_path} is not a regular file "
                "and cannot be read again on a rerun"
            )
        if path.exists() and not path.is_file():
            # A device (/dev/zero) would be read forever; a directory cannot be appended to.
            raise CheckpointError(f"checkpoint {path} is not a regular file — give a file path")
        try:
            existing = path.read_bytes() if path.exists() else None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
        try:
            if existing is None or not existing.strip() or _torn_header(existing):
                header = cls._header(*fingerprint(pipeline, input_path))
                stream = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close()
                stream.write(header.encode() + b"\n")
                return cls(path, [], stream, created=existing is None)
            done = cls._read(path, existing, pipeline, input_path)
            complete = existing.rfind(b"\n") + 1
            if complete < len(existing):
                # Drop the line a crash cut short (it was ignored). Ending it with a newline
                # instead would make it count on the next read: "1050" cut to "10" would
                # claim line 10, and "7-9" cut to "7-" would be a damaged line.
                os.truncate(path, complete)
            stream = open(path, "ab", buffering=0)  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise CheckpointError(f"cannot use checkpoint {path}: {exc.strerror or exc}") from None
        return cls(path, done, stream)

    @staticmethod
    def _header(pipeline_hash: str, length: int, input_hash: str) -> str:
        return f"{MAGIC} pipeline={pipeline_hash} input={length}:{input_hash}"

    @classmethod
    def _read(
        cls, path: Path, data: bytes, pipeline: Path, input_path: Path
    ) -> list[tuple[int, int]]:
        lines = data.split(b"\n")
        complete = lines[:-1]  # the last piece has no newline: cut short, or empty
        try:
            header = complete[0].decode("ascii") if complete else ""
            magic, _, rest = header.rpartition(" pipeline=")
            pipeline_hash, _, input_part = rest.partition(" input=")
            length_text, _, input_hash = input_part.partition(":")
            length = int(length_text)
        except (UnicodeDecodeError, ValueError):
            magic = ""
        if magic != MAGIC:
            raise CheckpointError(
                f"{path} is not a choreo checkpoint — give another --checkpoint path, "
                "or delete the file to start over"
            )
        current = fingerprint(pipeline, input_path, prefix=length)
        if current[0] != pipeline_hash:
            raise CheckpointError(
                f"checkpoint {path} was made for another version of the pipeline file — "
                "delete it to start over, or restore the pipeline it was made with"
            )
        if current[1] != length or current[2] != input_hash:
            raise CheckpointError(
                f"checkpoint {path} was made for other input data (its first {length} bytes "
                "differ) — delete it to start over, or give the input it was made for"
            )
        spans: list[tuple[int, int]] = []
        for number, raw in enumerate(complete[1:], 2):
            try:
                spans.extend(_parse_spans(raw.decode("ascii")))
            except ValueError:
                raise CheckpointError(
                    f"{path}:{number}: damaged checkpoint line — delete the file to start over"
                ) from None
        return _merge(spans)

    def is_finished(self, line: int) -> bool:
        """True when ``line``'s record finished in an earlier run."""
        i = bisect.bisect_right(self._starts, line) - 1
        return i >= 0 and line <= self._ends[i]

    def skip_finished(self, items: Iterable[Any], on_skip: Any) -> Iterator[Any]:
        """The items whose line is not finished; ``on_skip()`` is called for each one left out."""
        if not self._starts:
            yield from items
            return
        for item in items:
            if self.is_finished(item.line):
                on_skip()
                continue
            yield item

    def keep_unfinished(self, line: int) -> None:
        """Never mark ``line``: the input's last line, which has no line ending (yet).

        The reader says so before it hands the line over, so before its result is
        written. Parsed or not, the line may be cut short by a producer still writing
        it: a rerun must read it again once it is complete.
        """
        self._unfinished = line

    def mark(self, results: Sequence[Any]) -> None:
        """Record as finished the results just written and flushed (not interrupted ones,
        nor the unfinished last line: see ``keep_unfinished``)."""
        unfinished = self._unfinished
        lines = [
            r.line
            for r in results
            if r.line is not None
            and r.line != unfinished
            and not (r.error is not None and isinstance(r.error.exception, Interrupted))
        ]
        if lines:
            self._stream.write(_format_spans(lines).encode("ascii") + b"\n")

    def discard(self) -> None:
        """Remove the file if this run made it: the run ends before any record (exit 2),
        and a checkpoint holding only the input's fingerprint would refuse a corrected
        input next time. An existing checkpoint is kept as it is."""
        if self.created:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def close(self) -> None:
        """Close the file (every mark is already written: the file is unbuffered)."""
        with contextlib.suppress(OSError):
            os.fsync(self._stream.fileno())
        self._stream.close()


def _torn_header(data: bytes) -> bool:
    """True for a file holding only the start of a header: a crash while it was created."""
    return b"\n" not in data and MAGIC.encode().startswith(data[: len(MAGIC)])


def _parse_spans(text: str) -> Iterator[tuple[int, int]]:
    for part in text.split():
        start, sep, end = part.partition("-")
        first = int(start)
        last = int(end) if sep else first
        if first < 1 or last < first:
            raise ValueError(part)
        yield first, last


def _format_spans(lines: list[int]) -> str:
    lines = sorted(lines)
    parts = []
    start = prev = lines[0]
    for line in lines[1:]:
        if line == prev + 1:
            prev = line
            continue
        parts.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = line
    parts.append(f"{start}-{prev}" if prev != start else str(start))
    return " ".join(parts)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
