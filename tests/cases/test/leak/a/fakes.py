"""Folder a's fakes: folder b has a module of the same name without `first`."""

from typing import Any


def first(ctx: Any) -> str:
    return "a"
