"""The one step of the hello sample: greet the record's name."""

from __future__ import annotations

from typing import Any


def greet(ctx: Any, record: dict) -> str:
    """Log and return a greeting; the return value lands in the data bag."""
    greeting = f"hello, {record['name']}"
    ctx.log.info(greeting)
    return greeting
