"""The JSON Lines reader under its first name (``choreo_cli.records``): see ``choreo_cli.jsonl.reader``."""

from __future__ import annotations

from choreo_cli.jsonl.reader import JsonlReader, iter_items, reason_for

__all__ = ["JsonlReader", "iter_items", "reason_for"]
