"""The one seam to the terminal: messages, summary table, logging and tables (the progress
display is ``choreo_cli.cli.progress``, drawn on this module's rich console).

Whatever text from a file, a record or an exception it prints passes ``printable``
first (``choreo_cli.cli.escapes``): control characters are shown as escapes, never sent.

Only this module and the progress display import rich, and only when the stream is a
terminal (or for the table of `choreo show`), so commands that print nothing fancy
(``choreo --version``, output piped to a file) start fast. Which streams there are, and whether each may have
colour, is ``choreo_cli.cli.streams``'s to say.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, TextIO

from choreo_cli.cli.escapes import printable
from choreo_cli.cli.streams import fancy as fancy_stream
from choreo_cli.cli.units import human_seconds

if TYPE_CHECKING:
    from rich.console import Console as RichConsole

    from choreo_cli.cli.streams import Streams
    from choreo_cli.core.summary import RunSummary

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s%(choreo_record)s"


_RICH_CONSOLES: dict[int, RichConsole] = {}


def rich_console(stream: TextIO) -> RichConsole:
    """The shared rich console for ``stream`` (imports rich), so logs and progress agree.

    Only made for a stream where colour may be used: ``NO_COLOR`` is unset there.
    """
    console = _RICH_CONSOLES.get(id(stream))
    if console is None or console.file is not stream:  # ids of dead streams are reused
        from rich.console import Console as RichConsole

        console = RichConsole(
            file=stream, no_color=False, highlight=False, soft_wrap=True, stderr=True
        )
        _RICH_CONSOLES[id(stream)] = console
    return console


class Console:
    """People's messages on stderr: ``error``, ``warning``, ``info`` (silenced by ``quiet``).

    A message is always one line: its control characters are escaped (``printable``).

    >>> import io
    >>> stream = io.StringIO()
    >>> Console(stream).error("cannot read input.jsonl: no such file")
    >>> stream.getvalue()
    'error: cannot read input.jsonl: no such file\\n'
    >>> Console(stream).info("step 'x\\r\\x1b[2K' failed")
    >>> stream.getvalue().splitlines()[-1]
    "step 'x\\\\r\\\\x1b[2K' failed"
    """

    def __init__(self, stream: TextIO, *, quiet: bool = False, fancy: bool | None = None) -> None:
        self.stream = stream
        self.quiet = quiet
        # True when colour and live displays are used (a terminal, no NO_COLOR); by
        # default decided from the stream and the environment as they are now.
        self.fancy = fancy_stream(stream) if fancy is None else fancy

    def error(self, message: str, *, prefix: bool = True) -> None:
        """Print an error (always, even when quiet); ``prefix=False`` omits "error: "."""
        if prefix:
            self._say("error", "bold red", message)
        else:
            self._say(None, None, message)

    def warning(self, message: str) -> None:
        """Print a warning (not when quiet)."""
        if not self.quiet:
            self._say("warning", "yellow", message)

    def info(self, message: str) -> None:
        """Print an informational message (not when quiet)."""
        if not self.quiet:
            self._say(None, None, message)

    def progress_line(self, message: str) -> None:
        """Print one progress line (``choreo_cli.cli.progress`` decides when)."""
        self._say(None, None, message)

    def render_summary(self, summary: RunSummary) -> None:
        """Print the run's summary on this console's stream."""
        render_summary(summary, self.stream, fancy=self.fancy)

    def setup_logging(self, level: str | int = "WARNING") -> logging.Logger:
        """Send the ``choreo`` loggers to this console's stream."""
        return setup_logging(level, self.stream, fancy=self.fancy)

    def _say(self, label: str | None, style: str | None, message: str) -> None:
        stream = self.stream
        message = printable(message)
        try:
            if self.fancy:
                # Through rich: printed above a live progress bar, never into it.
                from rich.text import Text

                text = Text(f"{label}:" if label else "", style=style or "")
                text.append(f" {message}" if label else message, style="")
                rich_console(stream).print(text)
                return
            stream.write(f"{label}: {message}\n" if label else f"{message}\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr is gone too: nothing sensible is left to do


def build_console(streams: Streams, *, quiet: bool = False) -> Console:
    """The console of a command: its people's messages go to ``streams.stderr``.

    >>> import io
    >>> from choreo_cli.cli.streams import Streams
    >>> streams = Streams(stdin=None, stdout=io.StringIO(), stderr=io.StringIO())
    >>> build_console(streams, quiet=True).quiet
    True
    """
    return Console(streams.stderr, quiet=quiet, fancy=streams.stderr_fancy)


# -- summary --------------------------------------------------------------------------------


def render_summary(summary: RunSummary, stream: TextIO, *, fancy: bool | None = None) -> None:
    """Print the run's figures on ``stream`` (stderr): a rich table on a terminal, else text.

    ``fancy``: whether the table may be used (by default: ``stream`` is a terminal, no
    ``NO_COLOR``).
    """
    try:
        if fancy_stream(stream) if fancy is None else fancy:
            _render_rich(summary, stream)
        else:
            stream.write(format_summary(summary))
            stream.flush()
    except (OSError, ValueError):
        pass


def format_summary(summary: RunSummary) -> str:
    """The summary as plain text.

    >>> from choreo_cli.core.summary import RunSummary
    >>> times = iter([0.0, 2.0])
    >>> summary = RunSummary(["create"], clock=lambda: next(times))
    >>> summary.finish()
    >>> print(format_summary(summary), end="")
    records: 0 (succeeded 0, failed 0, cancelled 0, invalid 0)
    step    ran  skipped  failed  cancelled
    create    0        0       0          0
    wall time 2.00 s, 0 records/s
    """
    counts = summary.counts
    parts = [f"{status} {count:,}" for status, count in counts.items()]
    if summary.resumed:
        parts.append(f"resumed {summary.resumed:,}")
    lines = [f"records: {summary.total:,} ({', '.join(parts)})"]
    steps = summary.steps
    if steps:
        columns = _step_columns(steps)
        extra = _extra_step_columns(summary)
        rows = [["step", *columns, *(header for header, _ in extra)]]
        rows += [
            [
                printable(name),
                *(f"{counts[c]:,}" for c in columns),
                *(cells.get(name, "0") for _, cells in extra),
            ]
            for name, counts in steps.items()
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells).rstrip())
    lines += _limit_lines(summary)
    lines.append(f"wall time {summary.elapsed:.2f} s, {summary.records_per_second:,.0f} records/s")
    return "\n".join(lines) + "\n"


def _limit_lines(summary: RunSummary) -> list[str]:
    """One line per limit: its waits, the time waited, and each worker's share if shared."""
    lines = []
    for name, figure in summary.limits.items():
        line = (
            f"limit {printable(name)}: {figure['waits']:,} "
            f"{'wait' if figure['waits'] == 1 else 'waits'}, "
            f"{figure['wait_seconds']:.2f} s waited"
        )
        if figure["workers"] > 1:
            line += f" (each of {figure['workers']} workers: {figure['share']})"
        lines.append(line)
    return lines


def _step_columns(steps: dict[str, dict[str, int]]) -> list[str]:
    columns = ["ran", "skipped", "failed", "cancelled"]
    if any(counts["would_run"] for counts in steps.values()):
        columns.append("would_run")
    return columns


def _extra_step_columns(summary: RunSummary) -> list[tuple[str, dict[str, str]]]:
    """The step table's columns shown only when some step has a figure: ``retries``, and
    ``precheck errors`` (prechecks that raised something other than Skip or Cancel:
    "3 KeyError", or "4: KeyError 3, TypeError 1"). Each a header and step -> cell."""
    columns: list[tuple[str, dict[str, str]]] = []
    retries = summary.retries
    if retries:
        columns.append(("retries", {name: f"{count:,}" for name, count in retries.items()}))
    raised = summary.precheck_errors
    if raised:
        cells = {}
        for name, by_type in raised.items():
            counts = {kind: int(figure["count"] or 0) for kind, figure in by_type.items()}
            if len(counts) == 1:
                [(kind, count)] = counts.items()
                cells[name] = f"{count:,} {printable(kind)}"
            else:
                each = ", ".join(f"{printable(kind)} {count:,}" for kind, count in counts.items())
                cells[name] = f"{sum(counts.values()):,}: {each}"
        columns.append(("precheck errors", cells))
    return columns + _time_columns(summary)


def _time_columns(summary: RunSummary) -> list[tuple[str, dict[str, str]]]:
    """The step table's timing columns: the time spent in each step's calls (prechecks
    and jobs), and its job's p50, p95 and longest call; none when no call was timed."""
    times = summary.times
    if not times.phases:
        return []
    spent: dict[str, str] = {}
    job_figures: dict[str, dict[str, str]] = {"job p50": {}, "job p95": {}, "job max": {}}
    for name in summary.steps:
        precheck, job = times.get(name, "precheck"), times.get(name, "job")
        total = sum(t.total for t in (precheck, job) if t is not None)
        spent[name] = human_seconds(total) if precheck or job else "-"
        for header, value in (
            ("job p50", job and job.quantile(0.5)),
            ("job p95", job and job.quantile(0.95)),
            ("job max", job and job.max),
        ):
            job_figures[header][name] = "-" if job is None else human_seconds(value or 0.0)
    return [("time", spent), *job_figures.items()]


def format_precheck_warnings(summary: RunSummary) -> list[str]:
    """One line per step and exception type that a precheck raised and that was treated as
    a skip (``precheck_errors: skip``, the default): the end of `choreo run`'s stderr.
    Without a known line (records given without one, from the library), the line
    number is left out.

    >>> from choreo_cli.core.coordinator import Coordinator, Step
    >>> from choreo_cli.core.summary import RunSummary
    >>> coordinator = Coordinator()
    >>> coordinator.add_step(Step(name="invite", precheck=lambda ctx, r: r["id"], job=print))
    >>> summary = RunSummary(["invite"])
    >>> summary.add(coordinator.run({}, index=3, line=4))
    >>> format_precheck_warnings(summary)
    ["step 'invite': precheck raised KeyError on 1 record, first at line 4 (treated as a skip; raise Skip to skip on purpose)"]
    """
    lines = []
    for step, kind, count, line in summary.precheck_skips:
        records = "1 record" if count == 1 else f"{count:,} records"
        where = "" if line is None else f", first at line {line}"
        lines.append(
            f"step '{printable(step)}': precheck raised {printable(kind)} on {records}{where} "
            "(treated as a skip; raise Skip to skip on purpose)"
        )
    return lines


def _render_rich(summary: RunSummary, stream: TextIO) -> None:
    from rich.table import Table
    from rich.text import Text

    console = rich_console(stream)
    records = Table(title="records", title_justify="left", show_edge=False)
    counts = summary.counts
    styles = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "invalid": "magenta"}
    for status in counts:
        records.add_column(status, justify="right", style=styles.get(status))
    if summary.resumed:
        records.add_column("resumed", justify="right")
    records.add_column("total", justify="right", style="bold")
    cells = [f"{count:,}" for count in counts.values()]
    if summary.resumed:
        cells.append(f"{summary.resumed:,}")
    records.add_row(*cells, f"{summary.total:,}")
    console.print(records)
    steps = summary.steps
    if steps:
        table = Table(title="steps", title_justify="left", show_edge=False)
        table.add_column("step")
        columns = _step_columns(steps)
        extra = _extra_step_columns(summary)
        for column in [*columns, *(header for header, _ in extra)]:
            table.add_column(column, justify="right")
        for name, step_counts in steps.items():
            table.add_row(
                Text(printable(name)),
                *(f"{step_counts[c]:,}" for c in columns),
                *(Text(cells.get(name, "0")) for _, cells in extra),
            )
        console.print(table)
    for line in _limit_lines(summary):
        console.print(Text(line))
    console.print(f"wall time {summary.elapsed:.2f} s, {summary.records_per_second:,.0f} records/s")


# -- logging --------------------------------------------------------------------------------

_HANDLER_MARK = "_choreo_handler"


def setup_logging(level: str | int, stream: TextIO, *, fancy: bool | None = None) -> logging.Logger:
    """Send the ``choreo`` loggers (step loggers are ``choreo.step.<step>``) to ``stream``.

    Each record is one plain line, ``LEVEL logger: message (record N, line M)``
    (``LOG_FORMAT``), never wrapped and without a time column. On a terminal (``fancy``,
    by default decided from ``stream``) the level name has a colour and the line is
    printed through rich, above a live progress bar. Calling it again replaces the handler
    it installed. Raises ValueError for an unknown level.

    >>> import io
    >>> setup_logging("info", io.StringIO()).level == logging.INFO
    True
    """
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(
                f"unknown log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        level = number
    logger = logging.getLogger("choreo")
    for old in list(logger.handlers):
        if getattr(old, _HANDLER_MARK, False):
            logger.removeHandler(old)
    handler: logging.Handler
    if fancy_stream(stream) if fancy is None else fancy:
        handler = TerminalHandler(stream)
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(PrintableFormatter(LOG_FORMAT))
    from choreo_cli.core.step_logs import record_filter

    handler.addFilter(record_filter())
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


_LEVEL_STYLES = {"DEBUG": "dim", "INFO": "cyan", "WARNING": "yellow", "ERROR": "bold red"}


class TerminalHandler(logging.Handler):
    """Log lines on a terminal: the plain line, its level name in colour, printed by the
    stream's rich console (so above a live progress bar, which stays whole)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            from rich.text import Text

            text = Text(line)
            level = record.levelname
            if line.startswith(level):
                text.stylize(_LEVEL_STYLES.get(level, "bold red"), 0, len(level))
            rich_console(self.stream).print(text)
        except Exception:
            self.handleError(record)


class PrintableFormatter(logging.Formatter):
    r"""A log formatter whose lines cannot drive the terminal or fake another line.

    The line itself (logger name, which is the step's, message, record) is one line:
    every control character, ``\n`` included, is escaped. A traceback appended to it
    (``ctx.log.exception``, or sent by a worker process as text) keeps its own lines,
    with every other control character escaped.

    >>> record = logging.makeLogRecord({"name": "choreo.step.a\x1b[2K", "msg": "id %s",
    ...     "args": ("7\nINFO fake",), "levelname": "INFO", "choreo_record": ""})
    >>> PrintableFormatter(LOG_FORMAT).format(record)
    'INFO choreo.step.a\\x1b[2K: id 7\\nINFO fake'
    """

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = printable(self.formatMessage(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + printable(record.exc_text.rstrip("\n"), multiline=True)
        if record.stack_info:
            text += "\n" + printable(self.formatStack(record.stack_info), multiline=True)
        return text


# -- tables on stdout -----------------------------------------------------------------------


Cell = str | tuple[str, ...]
"""A table cell: one line of text, or a tuple of lines."""


def print_table(
    streams: Streams,
    *,
    title: str,
    caption: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Cell]],
) -> None:
    """Print a table for people on stdout (what `choreo show` prints); cells are plain
    text, never markup. Colour unless ``NO_COLOR``; off a terminal, 200 columns wide.

    Control characters are escaped everywhere: a cell or the title is one line, a cell of
    several lines is given as a tuple of them; the caption (a description) keeps its lines.
    """
    from rich.console import Console as RichConsole
    from rich.table import Table
    from rich.text import Text

    def cell_text(cell: Cell) -> Text:
        lines = (cell,) if isinstance(cell, str) else cell
        return Text("\n".join(printable(line) for line in lines))

    table = Table(
        title=Text(printable(title)),
        caption=None if caption is None else Text(printable(caption, multiline=True)),
        title_justify="left",
        caption_justify="left",
    )
    for column in columns:
        table.add_column(printable(column), overflow="fold")
    for row in rows:
        table.add_row(*(cell_text(cell) for cell in row))
    # Off a terminal rich assumes 80 columns; a wider page keeps references unbroken.
    console = RichConsole(
        file=streams.stdout,
        highlight=False,
        no_color=streams.no_color,
        width=None if streams.stdout_is_terminal else 200,
    )
    console.print(table)
