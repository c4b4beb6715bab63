"""Folder b's fakes: `first` is folder a's, and must not be found from here."""

from typing import Any


def second(ctx: Any) -> str:
    return "b"
