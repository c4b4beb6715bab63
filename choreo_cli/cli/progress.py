"""The progress of `choreo run` on stderr: a live bar on a terminal, plain lines elsewhere.

What it shows is read when it is drawn (a few times a second for the bar, every 10 s for
the plain lines), never pushed by the record loop: the loop pays nothing for it.

- records **finished**: the result lines handed to the writer (``lines_queued``), which
  counts the clean records of the fused loop one by one, as they are written;
- the **share of the input consumed**: where the last finished record ends in the input
  file. ``InputPositions`` wraps the input stream and notes, once per chunk read, how many
  records the bytes so far hold and where the last of them ends; the offset of record N is
  interpolated within its chunk. It is not the reader's read-ahead;
- records per second and an **ETA** (input a regular file of known size), both over the
  last ``WINDOW`` seconds; resumed records (``--checkpoint``) move the share, not the rate;
- the records that **failed** (status ``failed``).

``progress_kind`` decides which display a run gets (README "--progress").
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TextIO

if TYPE_CHECKING:
    from choreo_cli.cli.console import Console

# Seconds between two plain progress lines (``--progress`` without a terminal).
PROGRESS_INTERVAL = 10.0
# For tests only: another interval between plain lines, in seconds.
INTERVAL_ENV = "CHOREO_PROGRESS_INTERVAL"
# Seconds over which records/s and the ETA are measured.
WINDOW = 20.0


class Progress(Protocol):
    """What a run does with its progress display: close it once the records are done."""

    enabled: bool

    def close(self) -> None: ...


class NullProgress:
    """A progress display that shows nothing and costs nothing."""

    enabled = False

    def close(self) -> None:
        """Do nothing."""


# -- what is shown ------------------------------------------------------------------------


class InputPositions:
    r"""The input's binary stream, read through: notes where its records end.

    Once per chunk read (not per record) it counts the chunk's line endings, less its
    blank lines, and notes ``(records so far, offset after the last line ending)``.
    ``offset_of(n)`` is where the ``n``-th record ends, interpolated within the chunk that
    holds it (whitespace-only lines other than empty ones count as records: a small error).
    It is asked from one thread, with an ``n`` that never decreases (records finished):
    what lies before is forgotten, so memory stays bounded by the records read ahead.

    >>> import io
    >>> positions = InputPositions(io.BytesIO(b'1\n\n22\n333\n4'))
    >>> positions.read1(6), positions.read1(100), positions.read1(100)
    (b'1\n\n22\n', b'333\n4', b'')
    >>> [positions.offset_of(n) for n in (0, 1, 2, 3, 4)]
    [0, 3, 6, 10, 11]
    """

    def __init__(self, stream: BinaryIO, *, total: int | None = None) -> None:
        self.total = total  # the bytes to read, when known
        self._stream = stream
        self._read: Callable[[int], bytes] = getattr(stream, "read1", None) or stream.read
        # (records, offset) at the end of each chunk's last complete line; pruned from
        # the left as records finish (bounded by the records read ahead).
        self._marks: deque[tuple[int, int]] = deque([(0, 0)])
        self._records = 0
        self._offset = 0
        self._carry = b"\n"  # the last bytes read (as if a line ended before the first)
        self._tail = False  # the bytes after the last line ending hold a record
        self.ended = False  # the end of the input was read

    def read1(self, size: int = -1) -> bytes:
        """Read as the wrapped stream's ``read1`` (or ``read``) does, and take note."""
        data = self._read(size)
        if data:
            self._note(data)
        elif not self.ended:
            self.ended = True
            if self._tail:  # a last line without a line ending
                self._records += 1
                self._marks.append((self._records, self._offset))
        return data

    read = read1

    def _note(self, data: bytes) -> None:
        start = self._offset
        self._offset += len(data)
        last = data.rfind(b"\n")
        if last < 0:
            self._tail = self._tail or bool(data.strip())
            self._carry = (self._carry + data)[-2:]
            return
        lines = data.count(b"\n")
        # Empty lines (LF or CRLF), once per chunk in C; a run of several blank lines in a
        # row counts short by some (each is then taken for a record: a small error).
        blank = _blanks(data)
        # ... and those cut by the end of the previous chunk.
        head = data[:2]
        blank += _blanks(self._carry + head) - _blanks(self._carry) - _blanks(head)
        self._records += lines - blank
        self._marks.append((self._records, start + last + 1))
        self._tail = bool(data[last + 1 :].strip())
        self._carry = data[-2:]

    def offset_of(self, records: int) -> int:
        """Where the ``records``-th record ends (its line ending included), in bytes."""
        marks = self._marks
        # Only this method removes marks; the reader only appends (atomic on a deque).
        while len(marks) > 1 and marks[1][0] <= records:
            marks.popleft()
        first, offset = marks[0]
        if len(marks) == 1 or records <= first:
            return offset
        last, end = marks[1]
        return offset + (end - offset) * (records - first) // (last - first)


def _blanks(data: bytes) -> int:
    return data.count(b"\n\n") + data.count(b"\n\r\n")


class RunFigures:
    """What a display shows, read from the run's own objects when it is drawn.

    ``finished()``: records finished in this run; ``statuses()``: records by status (of
    those that came back as a Result); ``resumed()``: records skipped as finished before
    (``--checkpoint``); ``positions``: the input read so far, and its size (None, or no
    size: no share, no ETA).
    """

    def __init__(
        self,
        *,
        finished: Callable[[], int],
        statuses: Callable[[], dict[str, int]],
        resumed: Callable[[], int] = lambda: 0,
        positions: InputPositions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._finished = finished
        self._statuses = statuses
        self._resumed = resumed
        self.total = positions.total if positions is not None and positions.total else None
        self.positions = positions if self.total else None
        self._clock = clock
        self.started = clock()
        self._counts: dict[str, int] = {}
        self._done = 0
        # (time, records finished): records/s over the last WINDOW seconds.
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def read(self, *, final: bool = False) -> Reading:
        """The figures now. ``final``: the records are done; when the whole input was
        read, every record of it has its line (100%)."""
        now = self._clock()
        # Counted on the writer's and the main thread: never shown going back.
        self._done = done = max(self._done, self._finished())
        with contextlib.suppress(RuntimeError):  # a dict that grew while it was read
            self._counts = self._statuses()
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= WINDOW:
            samples.popleft()
        then, before = samples[0]
        elapsed = now - then
        rate = (done - before) / elapsed if elapsed > 0 else 0.0
        share: float | None = None
        eta: float | None = None
        if self.total is not None and self.positions is not None:
            resumed = self._resumed()
            complete = final and self.positions.ended
            position = self.total if complete else self.positions.offset_of(done + resumed)
            share = min(position / self.total, 1.0)
            if rate > 0 and done + resumed and not complete:
                # Bytes per record of the input so far, at this run's records per second.
                bytes_per_second = rate * position / (done + resumed)
                eta = max(self.total - position, 0) / bytes_per_second
        return Reading(done, share, rate, dict(self._counts), eta, now - self.started)


class Reading:
    """The figures of one moment; ``line()`` is the plain progress line."""

    __slots__ = ("counts", "done", "elapsed", "eta", "rate", "share")

    def __init__(
        self,
        done: int,
        share: float | None,
        rate: float,
        counts: dict[str, int],
        eta: float | None,
        elapsed: float,
    ) -> None:
        self.done = done
        self.share = share
        self.rate = rate
        self.counts = counts
        self.eta = eta
        self.elapsed = elapsed

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    def line(self, *, final: bool = False) -> str:
        """``12,345 records (41%), 4,100/s, failed 3, ETA 0:00:42``: the share and the
        ETA only for an input of known size; the last line has the run's average rate.

        >>> Reading(12345, 0.417, 4100.4, {"failed": 3}, 42.2, 3.0).line()
        '12,345 records (41%), 4,100/s, failed 3, ETA 0:00:42'
        >>> Reading(5, None, 0.0, {}, None, 2.0).line(final=True)
        '5 records, 2/s, failed 0'
        """
        text = f"{self.done:,} records"
        if self.share is not None:
            text += f" ({int(self.share * 100)}%)"
        rate = self.done / self.elapsed if final and self.elapsed > 0 else self.rate
        text += f", {rate:,.0f}/s, failed {self.failed:,}"
        if self.eta is not None and not final:
            text += f", ETA {format_eta(self.eta)}"
        return text


def format_eta(seconds: float) -> str:
    """``H:MM:SS``.

    >>> format_eta(42.4), format_eta(3725), format_eta(90000)
    ('0:00:42', '1:02:05', '25:00:00')
    """
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


# -- the displays -------------------------------------------------------------------------


class PlainProgress:
    """One plain line on stderr every ``interval`` seconds (from a thread of its own),
    and a last one when closed: for CI logs, ``NO_COLOR``, a terminal that shows results."""

    enabled = True

    def __init__(self, console: Console, figures: RunFigures, interval: float) -> None:
        self._console = console
        self._figures = figures
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="choreo-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        figures, interval = self._figures, self._interval
        tick = min(interval, 1.0)  # the rate's window needs samples between two lines
        due = figures.started + interval
        while not self._stop.wait(max(min(tick, due - time.monotonic()), 0.0)):
            reading = figures.read()
            if time.monotonic() >= due:
                self._console.progress_line(reading.line())
                due += interval * (1 + (time.monotonic() - due) // interval)

    def close(self) -> None:
        """Stop the thread and print the last line."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._console.progress_line(self._figures.read(final=True).line(final=True))


class LiveProgress:
    """A live line at the bottom of the terminal (rich redraws it a few times a second on
    its own thread; log lines and messages are printed above it), removed when closed."""

    enabled = True

    def __init__(self, stream: TextIO, figures: RunFigures) -> None:
        from rich.live import Live

        from choreo_cli.cli.console import rich_console

        self._figures = figures
        self._live = Live(
            self,
            console=rich_console(stream),
            refresh_per_second=8,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def close(self) -> None:
        """Remove the bar."""
        self._live.stop()

    def __rich__(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        reading = self._figures.read()
        grid = Table.grid(padding=(0, 1))
        row: list[Any] = []
        text = Text(f"{reading.done:,} records")
        if reading.share is not None:
            row.append(ProgressBar(total=1.0, completed=reading.share, width=20))
            text.append(f" ({int(reading.share * 100)}%)")
        text.append(f", {reading.rate:,.0f}/s, ")
        text.append(f"failed {reading.failed:,}", style="red" if reading.failed else "")
        for status, style in (("cancelled", "yellow"), ("invalid", "magenta")):
            if reading.counts.get(status):
                text.append(f", {status} {reading.counts[status]:,}", style=style)
        if reading.eta is not None:
            text.append(f", ETA {format_eta(reading.eta)}")
        row.append(text)
        grid.add_row(*row)
        return grid


def progress_interval(environ: dict[str, str] | os._Environ[str] | None = None) -> float:
    """The seconds between plain lines: 10, or ``CHOREO_PROGRESS_INTERVAL`` (tests only).

    >>> progress_interval({}), progress_interval({INTERVAL_ENV: "0.2"})
    (10.0, 0.2)
    """
    text = (os.environ if environ is None else environ).get(INTERVAL_ENV)
    try:
        value = float(text) if text else PROGRESS_INTERVAL
    except ValueError:
        return PROGRESS_INTERVAL
    return value if value > 0 else PROGRESS_INTERVAL


def progress_kind(
    console: Console, *, wanted: bool | None, results_on_terminal: bool
) -> str | None:
    """Which display a run gets: ``"live"``, ``"plain"`` or None (``wanted``: True for
    ``--progress``, False for ``--no-progress``, None for neither).

    - ``"live"``, a bar, when stderr may have one (a terminal, no ``NO_COLOR``, not
      ``TERM=dumb``) and the result lines do not go to a terminal: by default or wanted.
    - ``"plain"`` lines (every 10 s, and a last one) when wanted and no bar can be
      drawn: no terminal, ``NO_COLOR``, or the result lines on a terminal (a bar would
      be drawn into them; whole lines never cut into one).
    - None otherwise, and always with ``-q``.

    >>> import io
    >>> from choreo_cli.cli.console import Console
    >>> plain = Console(io.StringIO())
    >>> progress_kind(plain, wanted=None, results_on_terminal=False) is None
    True
    >>> progress_kind(plain, wanted=True, results_on_terminal=False)
    'plain'
    >>> fancy = Console(io.StringIO(), fancy=True)
    >>> progress_kind(fancy, wanted=None, results_on_terminal=False)
    'live'
    >>> progress_kind(fancy, wanted=None, results_on_terminal=True) is None
    True
    >>> progress_kind(fancy, wanted=True, results_on_terminal=True)
    'plain'
    """
    if wanted is False or console.quiet:
        return None
    if console.fancy and not results_on_terminal:
        return "live"
    return "plain" if wanted else None


def start_progress(kind: str | None, console: Console, figures: RunFigures) -> Progress:
    """The display ``progress_kind`` chose, started, showing ``figures``."""
    if kind == "live":
        return LiveProgress(console.stream, figures)
    if kind == "plain":
        return PlainProgress(console, figures, progress_interval())
    return NullProgress()
