"""Both sides: ctx.log lines of steps run in workers, sent to choreo's process and logged there.

A step's ``ctx.log`` line logged in a worker process travels to the parent as a plain
dict (its message already formatted, its traceback as text) and is handled there by the
logger of the same name: it gets the same format, level and destination as with the
thread executor, and never garbles the progress bar or another process's line.
``install`` and ``uninstall`` run in the workers (``process_worker``, ``dask_worker``);
``replay``, ``replay_event`` and ``forwarded_level`` in choreo's process.

>>> sent = []
>>> handler = ForwardingHandler(sent.append)
>>> logger = logging.getLogger("choreo.doctest")
>>> logger.addHandler(handler)
>>> logger.warning("hello %s", "there")
>>> sent[0]["msg"], sent[0]["args"], sent[0]["levelname"]
('hello there', None, 'WARNING')
>>> logger.removeHandler(handler)
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from typing import Any

# The logger a worker forwards: the step loggers (``choreo.step.<step>``) are under it.
FORWARDED = "choreo"
_PLAIN = (str, int, float, bool, type(None))
_FORMATTER = logging.Formatter()


class ForwardingHandler(logging.Handler):
    """Hands each record, made portable, to ``send``; adds which record a step logged about."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        from choreo_cli.core.step_logs import record_filter

        super().__init__()
        self._send = send
        # Here, in the worker, the calling frames still hold the step's ctx.
        self.addFilter(record_filter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(portable(record))
        except Exception:
            self.handleError(record)


def portable(record: logging.LogRecord) -> dict[str, Any]:
    """The record's attributes, as a dict that pickles anywhere (as SocketHandler does)."""
    if record.exc_info and not record.exc_text:
        record.exc_text = _FORMATTER.formatException(record.exc_info)
    attributes = dict(record.__dict__)
    attributes["msg"] = record.getMessage()
    attributes["args"] = None
    attributes["exc_info"] = None
    attributes.pop("message", None)
    try:
        pickle.dumps(attributes)
    except Exception:
        # An ``extra=`` value that does not pickle travels as its repr.
        for key, value in attributes.items():
            if not isinstance(value, _PLAIN):
                attributes[key] = repr(value)
    return attributes


def install(send: Callable[[dict[str, Any]], None], level: int) -> ForwardingHandler:
    """In a worker process: send the ``choreo`` loggers' records of ``level`` and above."""
    handler = ForwardingHandler(send)
    logger = logging.getLogger(FORWARDED)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # a root handler the steps' modules set up would print it twice
    return handler


def uninstall(handler: logging.Handler) -> None:
    """Stop sending what ``install`` sent (a Dask worker outlives a run)."""
    logging.getLogger(FORWARDED).removeHandler(handler)


def topic(run_id: str) -> str:
    """The Dask event topic a run's workers send their log records on."""
    return f"choreo-log-{run_id}"


def replay_event(event: tuple[float, bytes]) -> None:
    """A Dask event of ``topic``: (time, a pickled record) -> ``replay``."""
    replay(pickle.loads(event[1]))


def replay(attributes: dict[str, Any]) -> None:
    """In choreo's process: log a record a worker sent, as if it had been logged here."""
    record = logging.makeLogRecord(attributes)
    logging.getLogger(record.name).handle(record)


def forwarded_level() -> int:
    """The level below which workers need not send anything: choreo's own, as configured."""
    return logging.getLogger(FORWARDED).getEffectiveLevel()
