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
    build_console,
    format_summary,
    render_summary,
    setup_logging,
)
from choreo_cli.cli.progress import LiveProgress, RunFigures, progress_kind, start_progress
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
from choreo_cli.cli.console import Console, render_summary, setup_logging
from choreo_cli.cli.progress import RunFigures, progress_kind, start_progress
from choreo_cli.core.summary import RunSummary
stream = io.StringIO()
console = Console(stream)
kind = progress_kind(console, wanted=True, results_on_terminal=False)
progress = start_progress(kind, console, RunFigures(finished=lambda: 3, statuses=dict))
progress.close()
assert stream.getvalue().startswith("3 records, "), stream.getvalue()
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


def test_no_progress_when_disabled_or_not_a_terminal(terminal: TextIO) -> None:
    assert progress_kind(Console(terminal), wanted=False, results_on_terminal=False) is None
    assert progress_kind(Console(io.StringIO()), wanted=None, results_on_terminal=False) is None


def test_progress_is_live_on_a_terminal(terminal: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    console = Console(terminal)
    kind = progress_kind(console, wanted=None, results_on_terminal=False)
    progress = start_progress(kind, console, RunFigures(finished=lambda: 3, statuses=dict))
    try:
        assert isinstance(progress, LiveProgress)
    finally:
        progress.close()


def test_no_color_turns_off_progress_and_colour(
    terminal: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert progress_kind(Console(terminal), wanted=None, results_on_terminal=False) is None
    assert progress_kind(Console(terminal), wanted=True, results_on_terminal=False) == "plain"
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
    quiet = build_console(streams_over(terminal), quiet=True)
    assert progress_kind(quiet, wanted=True, results_on_terminal=False) is None
    summary = RunSummary(clock=clock(0.0, 1.0))
    summary.finish()
    console.render_summary(summary)
    assert "records: 0" in stream.getvalue()
    console.setup_logging("warning")
    logging.getLogger("choreo.step.a").warning("careful")
    assert stream.getvalue().endswith("WARNING choreo.step.a: careful\n")


def test_logging_on_a_terminal_is_the_plain_line_unwrapped() -> None:
    """On a terminal log lines are printed through rich (above a live bar), in the same
    format as elsewhere: no time column, no wrapping at 80 columns."""
    stream = io.StringIO()
    setup_logging("info", stream, fancy=True)
    long = "x" * 300
    logging.getLogger("choreo.step.parse").warning("bad %s\x1b[2K", long)
    assert stream.getvalue() == f"WARNING choreo.step.parse: bad {long}\\x1b[2K\n"
