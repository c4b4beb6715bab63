"""Which record a step's log line is about: a logging filter shared by every executor."""

from __future__ import annotations

import logging
import sys
from types import FrameType

from choreo_cli.core.context import Context


class _RecordFilter(logging.Filter):
    """Adds which record a step's log line is about: `` (record 3, line 4)``.

    The record is found from the ``ctx`` of the calling frames, only when a line is
    logged, so the hot loop pays nothing for it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "choreo_record"):
            return True  # found where it was logged (a worker process sent it)
        record.choreo_record = ""
        if record.name.startswith("choreo.step."):
            frame: FrameType | None = sys._getframe(1)
            for _ in range(30):
                if frame is None:
                    break
                ctx = frame.f_locals.get("ctx")
                if isinstance(ctx, Context):
                    where = f"record {ctx.index}"
                    if ctx.line is not None:
                        where += f", line {ctx.line}"
                    record.choreo_record = f" ({where})"
                    break
                frame = frame.f_back
        return True


def record_filter() -> logging.Filter:
    """A filter giving each record ``choreo_record``: which record a step logged about."""
    return _RecordFilter()
