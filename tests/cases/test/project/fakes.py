"""Replacements the fixture project's tests name."""

from __future__ import annotations

from typing import Any

from choreo_cli import Cancel


class Conflict(Exception):
    pass


def shout(ctx: Any, record: dict, *, suffix: str) -> str:
    return f"{ctx.values['prefix']}-{record['id']}{suffix}"


def refuse(ctx: Any) -> None:
    raise Cancel("refused")
