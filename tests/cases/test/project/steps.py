"""Steps of the `choreo test` fixture project: a list of known ids stands for a database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from choreo_cli import Skip


class Db:
    def __init__(self, rows: list[int]) -> None:
        self.rows = list(rows)


def connect(rows: list[int]) -> Iterator[Db]:
    yield Db(rows)


def exists(ctx: Any, record: dict) -> None:
    if record["id"] in ctx.resources.db.rows:
        raise Skip("exists", data=record["id"])


def create(ctx: Any, record: dict) -> int:
    if record.get("fail"):
        raise ValueError(f"cannot create {record['id']}")
    if record.get("sleep"):
        time.sleep(record["sleep"])
    ctx.resources.db.rows.append(record["id"])
    return record["id"] * 10


def label(ctx: Any, record: dict) -> str:
    return f"{ctx.values['prefix']}-{record['id']}"
