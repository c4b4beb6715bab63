"""The progress display's figures (cli/progress.py): records finished, the share of the
input by the position of the records finished (not the reader's read-ahead), rates, ETA."""

from __future__ import annotations

import io
from typing import Any

import pytest

from choreo_cli.cli.console import Console
from choreo_cli.cli.progress import (
    INTERVAL_ENV,
    InputPositions,
    PlainProgress,
    RunFigures,
    progress_interval,
    progress_kind,
)
from choreo_cli.jsonl.reader import JsonlReader


def lines(count: int, *, width: int = 10) -> bytes:
    return b"".join(b'{"n":%*d}\n' % (width, i) for i in range(count))


def read_all(positions: InputPositions, size: int) -> None:
    while positions.read1(size):
        pass


def test_offsets_follow_the_records_not_the_bytes_read() -> None:
    data = lines(1000)  # 17 bytes a line
    positions = InputPositions(io.BytesIO(data), total=len(data))
    positions.read1(17 * 500)  # read ahead: half the input
    assert positions.offset_of(10) == 170
    assert positions.offset_of(250) == 17 * 250
    read_all(positions, 4096)
    assert positions.offset_of(999) == 17 * 999
    assert positions.offset_of(1000) == len(data)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_blank_lines_and_a_last_line_without_its_ending(size: int) -> None:
    data = b'\n{"a":1}\n\n[2]\r\n\r\n3\n4'
    positions = InputPositions(io.BytesIO(data), total=len(data))
    read_all(positions, size)  # chunks cut inside lines and between blank lines
    assert positions.ended
    assert positions.offset_of(3) == len(data) - 1  # the end of line "3\n"
    assert positions.offset_of(4) == len(data)


def test_the_reader_reads_through_it_as_through_the_file() -> None:
    data = lines(3000)
    positions = InputPositions(io.BufferedReader(io.BytesIO(data)), total=len(data))  # type: ignore[arg-type]
    items = list(JsonlReader(positions, chunk_size=1000))  # type: ignore[arg-type]
    assert [item.value for item in items] == [{"n": i} for i in range(3000)]
    assert positions.offset_of(1500) == 17 * 1500


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_figures_share_rate_and_eta() -> None:
    data = lines(1000)
    positions = InputPositions(io.BytesIO(data), total=len(data))
    read_all(positions, 1 << 16)  # the reader read everything ahead
    clock = Clock()
    done = {"n": 0}
    figures = RunFigures(
        finished=lambda: done["n"],
        statuses=lambda: {"succeeded": done["n"] - 3, "failed": 3},
        positions=positions,
        clock=clock,
    )
    clock.now += 2
    done["n"] = 250
    reading = figures.read()
    assert reading.line() == "250 records (25%), 125/s, failed 3, ETA 0:00:06"
    clock.now += 4
    done["n"] = 1000
    assert figures.read(final=True).line(final=True) == "1,000 records (100%), 167/s, failed 3"


def test_resumed_records_move_the_share_not_the_rate() -> None:
    data = lines(1000)
    positions = InputPositions(io.BytesIO(data), total=len(data))
    read_all(positions, 1 << 16)
    clock = Clock()
    figures = RunFigures(
        finished=lambda: 100, statuses=dict, resumed=lambda: 500, positions=positions, clock=clock
    )
    clock.now += 10
    # 600 of 1,000 records: 400 left at 10/s.
    assert figures.read().line() == "100 records (60%), 10/s, failed 0, ETA 0:00:40"


def test_without_a_size_no_share_and_no_eta() -> None:
    clock = Clock()
    figures = RunFigures(finished=lambda: 50, statuses=dict, clock=clock)
    clock.now += 5
    assert figures.read().line() == "50 records, 10/s, failed 0"


def test_the_count_never_goes_back() -> None:
    counts = iter([10, 7, 12])
    figures = RunFigures(finished=lambda: next(counts), statuses=dict, clock=Clock())
    assert [figures.read().done for _ in range(3)] == [10, 10, 12]


def test_plain_lines_end_with_a_last_line() -> None:
    stream = io.StringIO()
    progress = PlainProgress(Console(stream), RunFigures(finished=lambda: 7, statuses=dict), 60)
    progress.close()
    progress.close()  # once
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]
    assert stream.getvalue().startswith("7 records, ")


@pytest.mark.parametrize(
    ("fancy", "wanted", "results_on_terminal", "kind"),
    [
        (True, None, False, "live"),
        (True, True, False, "live"),
        (True, None, True, None),  # never drawn into the result lines
        (True, True, True, "plain"),
        (False, None, False, None),
        (False, True, False, "plain"),
        (False, True, True, "plain"),
        (True, False, False, None),
        (False, False, False, None),
    ],
)
def test_which_display(
    fancy: bool, wanted: bool | None, results_on_terminal: bool, kind: Any
) -> None:
    console = Console(io.StringIO(), fancy=fancy)
    assert progress_kind(console, wanted=wanted, results_on_terminal=results_on_terminal) == kind
    quiet = Console(io.StringIO(), fancy=fancy, quiet=True)
    assert progress_kind(quiet, wanted=wanted, results_on_terminal=results_on_terminal) is None


def test_the_interval_is_ten_seconds_unless_a_test_says() -> None:
    assert progress_interval({}) == 10.0
    assert progress_interval({INTERVAL_ENV: "0.5"}) == 0.5
    assert progress_interval({INTERVAL_ENV: "soon"}) == 10.0
    assert progress_interval({INTERVAL_ENV: "-1"}) == 10.0
