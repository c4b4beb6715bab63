"""JSON Lines in and out: the reader, result-line encoding, the writer, the fused line runner, the checkpoint.

``JsonlReader`` and ``run_lines`` are imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from choreo_cli.jsonl.line_runner import run_lines
    from choreo_cli.jsonl.reader import JsonlReader

_EXPORTS = {
    "JsonlReader": "choreo_cli.jsonl.reader",
    "run_lines": "choreo_cli.jsonl.line_runner",
}

__all__ = ["JsonlReader", "run_lines"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'choreo_cli.jsonl' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
