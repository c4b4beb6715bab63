"""Log records made portable in a worker process and logged again in choreo's process."""

from __future__ import annotations

import io
import logging
import pickle
from collections.abc import Iterator
from typing import Any

import pytest

from choreo_cli.cli.console import setup_logging
from choreo_cli.core.context import Context
from choreo_cli.executors import logs


class Opaque:
    def __reduce__(self) -> Any:
        raise TypeError("no pickling")

    def __repr__(self) -> str:
        return "<opaque>"


@pytest.fixture
def sent() -> Iterator[list[dict[str, Any]]]:
    """What a worker's handler sends, installed as in a worker process; removed after."""
    logger = logging.getLogger(logs.FORWARDED)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    box: list[dict[str, Any]] = []
    logs.install(box.append, logging.INFO)
    yield box
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def step_logs(ctx: Context, message: str, *args: Any, **kwargs: Any) -> None:
    # ``ctx`` is a local of this frame, as it is in the compiled runner's.
    logging.getLogger("choreo.step.work").warning(message, *args, **kwargs)


def test_a_record_travels_as_plain_picklable_data(sent: list[dict[str, Any]]) -> None:
    ctx = Context.__new__(Context)
    ctx.index, ctx.line = 7, 9
    step_logs(ctx, "about %s and %d", "this", 3, extra={"thing": Opaque(), "n": 1})
    logging.getLogger("choreo.step.work").debug("below the level: not sent")
    (record,) = sent
    pickle.dumps(record)
    assert record["msg"] == "about this and 3"
    assert record["args"] is None
    assert record["thing"] == "<opaque>"
    assert record["n"] == 1
    assert record["choreo_record"] == " (record 7, line 9)"


def test_an_exception_travels_as_its_traceback_text(sent: list[dict[str, Any]]) -> None:
    try:
        raise ValueError("inner")
    except ValueError:
        logging.getLogger("choreo.step.work").exception("failed")
    (record,) = sent
    assert record["exc_info"] is None
    assert record["exc_text"].startswith("Traceback (most recent call last):")
    assert record["exc_text"].endswith("ValueError: inner")


def test_replayed_records_keep_where_they_were_logged(sent: list[dict[str, Any]]) -> None:
    ctx = Context.__new__(Context)
    ctx.index, ctx.line = 7, None
    step_logs(ctx, "from the worker")
    try:
        raise ValueError("inner")
    except ValueError:
        logging.getLogger("choreo.step.work").exception("failed")
    logger = logging.getLogger(logs.FORWARDED)
    # Now in choreo's process: its own handler, not the worker's.
    logger.handlers[:] = [h for h in logger.handlers if not isinstance(h, logs.ForwardingHandler)]
    stream = io.StringIO()
    setup_logging("info", stream)
    for record in list(sent):
        logs.replay(record)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING choreo.step.work: from the worker (record 7)"
    assert lines[1] == "ERROR choreo.step.work: failed (record 7)"
    assert lines[-1] == "ValueError: inner"
