"""JSON Lines in and out: the reader, result-line encoding, the writer, the fused line runner, the checkpoint.

``JsonlReader`` and ``run_lines`` are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from choreo_cli.lazy import lazy_exports

if TYPE_CHECKING:
    from choreo_cli.jsonl.line_runner import run_lines
    from choreo_cli.jsonl.reader import JsonlReader

_EXPORTS = {
    "JsonlReader": "choreo_cli.jsonl.reader",
    "run_lines": "choreo_cli.jsonl.line_runner",
}

__all__ = ["JsonlReader", "run_lines"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
