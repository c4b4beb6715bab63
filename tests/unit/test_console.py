"""The terminal seam: no rich unless on a terminal, NO_COLOR, summary text, logging."""

from __future__ import annotations

import io
import logging
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import pytest

from choreo_cli.cli.console import (
    Console,
    LiveProgress,
    NullProgress,
    build_console,
    build_progress,
    format_summary,
    render_summary,
    setup_logging,
)
from choreo_cli.cli.streams import Streams
from choreo_cli.core.coordinator import Coordinator, Step
from choreo_cli.core.summary import RunSummary


@pytest.fixture
def terminal() -> Iterator[TextIO]:
    """A text stream on a pseudo-terminal (isatty() is true)."""
    master, slave = pty.openpty()
    stream = open(slave, "w")  # noqa: SIM115 - closed below
    try:
        yield stream
    finally:
        stream.close()
        os.close(master)


@pytest.fixture(autouse=True)
def _clean_logger() -> Iterator[None]:
    logger = logging.getLogger("choreo")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def test_nothing_imports_rich_off_a_terminal() -> None:
    code = """
import io, logging, sys
from choreo_cli.cli.console import Console, build_progress, render_summary, setup_logging
from choreo_cli.core.summary import RunSummary
stream = io.StringIO()
progress = build_progress(True, 100, stream)
progress.advance(type("R", (), {"status": "succeeded"})())
progress.update_bytes(10)
progress.close()
summary = RunSummary(["a"])
summary.finish()
render_summary(summary, stream)
Console(stream).error("boom")
setup_logging("info", stream)
logging.getLogger("choreo.step.a").info("hello")
assert "rich" not in sys.modules, sorted(m for m in sys.modules if m.startswith("rich"))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_progress_is_a_no_op_when_disabled_or_not_a_terminal(terminal: TextIO) -> None:
    assert isinstance(build_progress(False, 10, terminal), NullProgress)
    assert isinstance(build_progress(True, 10, io.StringIO()), NullProgress)


def test_progress_is_live_on_a_terminal(terminal: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    progress = build_progress(True, 100, terminal)
    try:
        assert isinstance(progress, LiveProgress)
        for result in Coordinator().run_many(range(3)):
            progress.advance(result)
        progress.update_bytes(50)
        assert progress.counts["succeeded"] == 3
        assert progress.bytes_read == 50
    finally:
        progress.close()


def test_no_color_turns_off_progress_and_colour(
    terminal: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert isinstance(build_progress(True, 10, terminal), NullProgress)
    assert not Console(terminal).fancy


def test_an_empty_no_color_does_not_count(
    terminal: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "")
    monkeypatch.setenv("TERM", "xterm")
    assert Console(terminal).fancy


def test_messages_are_plain_off_a_terminal() -> None:
    stream = io.StringIO()
    console = Console(stream)
    console.error("cannot open input.jsonl")
    console.warning("VAR is unset")
    console.info("done")
    assert stream.getvalue() == "error: cannot open input.jsonl\nwarning: VAR is unset\ndone\n"


def test_quiet_prints_only_errors() -> None:
    stream = io.StringIO()
    console = Console(stream, quiet=True)
    console.info("done")
    console.warning("careful")
    console.error("broken")
    assert stream.getvalue() == "error: broken\n"


def clock(*times: float) -> Any:
    values = iter(times)
    return lambda: next(values)


def test_summary_as_text() -> None:
    def job(ctx: Any, record: int) -> None:
        if record == 2:
            raise ValueError("two")

    coordinator = Coordinator()
    coordinator.add_step(Step(name="create statement", job=job))
    summary = RunSummary(["create statement"], clock=clock(0.0, 0.5))
    for result in coordinator.run_many(range(1000)):
        summary.add(result)
    summary.resumed = 3
    summary.finish()
    assert format_summary(summary) == (
        "records: 1,000 (succeeded 999, failed 1, cancelled 0, invalid 0, resumed 3)\n"
        "step                ran  skipped  failed  cancelled\n"
        "create statement  1,000        0       1          0\n"
        "wall time 0.50 s, 2,000 records/s\n"
    )
    stream = io.StringIO()
    render_summary(summary, stream)
    assert stream.getvalue() == format_summary(summary)


def test_summary_on_a_terminal_is_a_table(
    terminal: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    summary = RunSummary(["[b]odd name"], clock=clock(0.0, 1.0))
    summary.finish()
    render_summary(summary, terminal)  # must not raise (markup in a step name is literal)


def test_plain_logging_shows_the_logger_name() -> None:
    stream = io.StringIO()
    setup_logging("info", stream)
    setup_logging("info", stream)  # replaces its handler: one line per message
    logging.getLogger("choreo.step.create statement").info("created %d", 7)
    logging.getLogger("choreo.step.create statement").debug("not shown")
    assert stream.getvalue() == "INFO choreo.step.create statement: created 7\n"


def test_unknown_log_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("loud", io.StringIO())


def streams_over(stderr: TextIO, environ: dict[str, str] | None = None) -> Streams:
    return Streams(stdin=None, stdout=io.StringIO(), stderr=stderr, environ=environ or {})


def test_build_console_offers_the_run_helpers(terminal: TextIO) -> None:
    stream = io.StringIO()
    console = build_console(streams_over(stream))
    console.error("line 3: unknown key", prefix=False)
    assert stream.getvalue() == "line 3: unknown key\n"
    assert isinstance(console.build_progress(enabled=None, total_bytes=None), NullProgress)
    assert isinstance(
        build_console(streams_over(terminal), quiet=True).build_progress(enabled=True),
        NullProgress,
    )
    summary = RunSummary(clock=clock(0.0, 1.0))
    summary.finish()
    console.render_summary(summary)
    assert "records: 0" in stream.getvalue()
    console.setup_logging("warning")
    logging.getLogger("choreo.step.a").warning("careful")
    assert stream.getvalue().endswith("WARNING choreo.step.a: careful\n")


def test_null_progress_takes_bytes_read_too() -> None:
    progress = build_progress(None, 10, io.StringIO())
    progress.advance(type("R", (), {"status": "failed"})(), 5)
    progress.update_bytes(7)
    progress.close()
