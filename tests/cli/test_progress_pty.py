"""`choreo run` on a real pseudo-terminal: the progress bar never gets into the result
lines, `--progress` prints plain lines where no bar can be drawn, an interruption or a
halt says so in one line, log lines keep the README's format (README "--progress")."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.cli.conftest import CHOREO, choreo_env, read_results

WritePipeline = Callable[..., Path]
RunChoreo = Callable[..., object]

PIPELINE = """\
version: 1
steps:
  - name: work
    job: steps:work
"""

STEPS = """\
import time


def work(ctx, record):
    time.sleep(record.get("sleep", 0))
    if record.get("fail"):
        raise RuntimeError("boom")
    if record.get("log"):
        ctx.log.warning("careful with %s", record["log"])
    return record["n"]
"""

# The plain progress line (README "--progress").
PLAIN = re.compile(r"^[\d,]+ records( \(\d+%\))?, [\d,]+/s, failed [\d,]+(, ETA \d+:\d\d:\d\d)?$")
# Colours, and what moves the cursor or erases (each ends a piece of text drawn at once).
COLOURS = re.compile(r"\x1b\[[0-9;]*m")
MOVES = re.compile(r"\x1b\[[0-9;?]*[A-Za-ln-z]|\r|\n")
# The live bar: its bar and count (the summary table's rules are not followed by a count).
BAR = re.compile(r"[━╸╺]+ +[\d,]+ records")


@dataclasses.dataclass
class PtyRun:
    code: int
    terminal: bytes  # what the pseudo-terminal showed (stdout and/or stderr)
    stdout: bytes  # stdout when it was a pipe
    stderr: bytes  # stderr when it was a pipe

    @property
    def text(self) -> str:
        return self.terminal.decode("utf-8", errors="replace")

    def lines(self) -> list[str]:
        """The terminal's lines, CR/LF stripped."""
        return [line.strip("\r") for line in self.text.split("\n")]


def run_on_pty(
    args: Sequence[str],
    cwd: Path,
    *,
    stdout_pty: bool = True,
    stderr_pty: bool = True,
    env: dict[str, str] | None = None,
    when: Callable[[bytes, subprocess.Popen[bytes]], None] | None = None,
    timeout: float = 30,
) -> PtyRun:
    """Run ``choreo ARGS`` with stdout and/or stderr on a fresh pseudo-terminal (120x40,
    TERM=xterm-256color), the others piped; ``when(terminal_so_far, process)`` is called
    as output arrives."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    environment = choreo_env({"TERM": "xterm-256color", **(env or {})})
    process = subprocess.Popen(
        [str(CHOREO), *args],
        stdin=subprocess.DEVNULL,
        stdout=slave if stdout_pty else subprocess.PIPE,
        stderr=slave if stderr_pty else subprocess.PIPE,
        cwd=cwd,
        env=environment,
    )
    os.close(slave)
    names = {master: "terminal"}
    for name in ("stdout", "stderr"):
        stream = getattr(process, name)
        if stream is not None:
            names[stream.fileno()] = name
    chunks: dict[str, list[bytes]] = {name: [] for name in ("terminal", "stdout", "stderr")}
    open_fds = set(names)
    deadline = time.monotonic() + timeout
    try:
        while open_fds:
            if time.monotonic() > deadline:
                raise AssertionError(f"choreo {' '.join(args)} did not end in {timeout} s")
            ready, _, _ = select.select(list(open_fds), [], [], 0.5)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError as exc:  # the pty's other end closed: EIO on Linux
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    open_fds.discard(fd)
                    continue
                chunks[names[fd]].append(data)
                if fd == master and when is not None:
                    when(b"".join(chunks["terminal"]), process)
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
        for name in ("stdout", "stderr"):
            stream = getattr(process, name)
            if stream is not None:
                stream.close()
    joined = {name: b"".join(parts) for name, parts in chunks.items()}
    return PtyRun(code, joined["terminal"], joined["stdout"], joined["stderr"])


def write_input(
    path: Path, count: int, *, sleep: float = 0.002, **special: dict[str, object]
) -> None:
    """``count`` records ``{"n": i, "sleep": ...}``; ``special`` maps "i" to extra fields."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            record = {"n": i, "sleep": sleep, **special.get(str(i), {})}
            f.write(json.dumps(record) + "\n")


@pytest.fixture
def workdir(write_pipeline: WritePipeline, tmp_path: Path) -> Path:
    write_pipeline(PIPELINE, STEPS)
    write_input(tmp_path / "in.jsonl", 200)
    return tmp_path


def pieces(run: PtyRun) -> list[str]:
    """The pieces of text the terminal printed whole, without colours: cut wherever the
    cursor moved (a line end, a carriage return, an erase), so a log or stop line that
    a bar was drawn into, or that was drawn into the bar, is not found whole."""
    return MOVES.split(COLOURS.sub("", run.text))


def result_lines(run: PtyRun) -> list[dict[str, object]]:
    """The result lines on the terminal: each must be a whole JSON line."""
    found = []
    for line in run.lines():
        if '"index"' in line:
            found.append(json.loads(line))  # fails on a line a bar was drawn into
    return found


def test_no_bar_on_the_terminal_that_shows_the_results(workdir: Path) -> None:
    run = run_on_pty(["run", "pipeline.yaml", "-i", "in.jsonl"], workdir)
    assert run.code == 0, run.text
    assert [line["index"] for line in result_lines(run)] == list(range(200))
    assert not BAR.search(COLOURS.sub("", run.text))
    assert not any(re.search(r"records \(\d+%\)|ETA", line) for line in pieces(run))


def test_forced_progress_there_is_whole_plain_lines(workdir: Path) -> None:
    run = run_on_pty(
        ["run", "pipeline.yaml", "-i", "in.jsonl", "--progress"],
        workdir,
        env={"CHOREO_PROGRESS_INTERVAL": "0.1"},
    )
    assert run.code == 0, run.text
    assert [line["index"] for line in result_lines(run)] == list(range(200))
    progress = [line for line in pieces(run) if " records" in line and "/s, failed" in line]
    assert progress, run.text
    assert all(PLAIN.match(line) for line in progress), progress
    assert progress[-1].startswith("200 records (100%), ")
    assert not BAR.search(COLOURS.sub("", run.text))


def assert_bar_shown_and_removed(text: str) -> None:
    """A bar was drawn (its share and count), then erased, the cursor shown again."""
    text = COLOURS.sub("", text)
    shown = [m.end() for m in re.finditer(r"[━╸╺]+ +[\d,]+ records \(\d+%\)", text)]
    assert shown, text
    rest = text[shown[-1] :]
    assert "\x1b[2K" in rest, rest  # the bar's line erased (transient)
    assert "\x1b[?25h" in rest, rest  # the cursor back


def test_a_bar_with_output_to_a_file(workdir: Path) -> None:
    run = run_on_pty(["run", "pipeline.yaml", "-i", "in.jsonl", "-o", "out.jsonl"], workdir)
    assert run.code == 0, run.text
    assert_bar_shown_and_removed(run.text)
    assert len(read_results(workdir / "out.jsonl")) == 200
    assert "records" in run.text.rsplit("\x1b[?25h", 1)[-1]  # the summary after the bar


def test_a_bar_on_stderr_with_stdout_piped(workdir: Path) -> None:
    run = run_on_pty(["run", "pipeline.yaml", "-i", "in.jsonl"], workdir, stdout_pty=False)
    assert run.code == 0, run.text
    assert_bar_shown_and_removed(run.text)
    lines = run.stdout.decode().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(200))


def test_no_progress_means_none(workdir: Path) -> None:
    run = run_on_pty(
        ["run", "pipeline.yaml", "-i", "in.jsonl", "-o", "out.jsonl", "--no-progress"], workdir
    )
    assert run.code == 0
    assert not re.search(r"records \(\d+%\)", run.text)


def test_no_color_with_progress_gives_plain_lines(workdir: Path) -> None:
    run = run_on_pty(
        ["run", "pipeline.yaml", "-i", "in.jsonl", "-o", "out.jsonl", "--progress"],
        workdir,
        env={"NO_COLOR": "1", "CHOREO_PROGRESS_INTERVAL": "0.1"},
    )
    assert run.code == 0
    assert "\x1b[" not in run.text
    progress = [line for line in run.lines() if PLAIN.match(line)]
    assert progress and progress[-1].startswith("200 records (100%), "), run.text


def test_progress_lines_on_a_pipe(workdir: Path, run_choreo: RunChoreo) -> None:
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "-o", "out.jsonl"]
    env = {"CHOREO_PROGRESS_INTERVAL": "0.1"}
    run = run_choreo([*args, "--progress"], env=env)
    lines = run.stderr.splitlines()  # type: ignore[attr-defined]
    progress = [line for line in lines if not line.startswith(("records:", "step", "work", "wall"))]
    # 200 records of at least 2 ms each: at least 0.4 s, lines every 0.1 s and a last one.
    assert len(progress) >= 2, lines
    assert all(PLAIN.match(line) for line in progress), progress
    assert "ETA " in progress[0]
    assert re.match(r"200 records \(100%\), [\d,]+/s, failed 0$", progress[-1])
    # Without --progress, or from standard input (no size: no share, no ETA).
    assert run_choreo(args, env=env).stderr.splitlines()[0].startswith("records:")  # type: ignore[attr-defined]
    piped = run_choreo(
        ["run", "pipeline.yaml", "-o", "out.jsonl", "--progress"],
        input=(workdir / "in.jsonl").read_bytes(),
        env=env,
    )
    last = [line for line in piped.stderr.splitlines() if PLAIN.match(line)][-1]  # type: ignore[attr-defined]
    assert re.match(r"200 records, [\d,]+/s, failed 0$", last), last


def sigint_once(marker: bytes) -> Callable[[bytes, subprocess.Popen[bytes]], None]:
    """A ``when`` that sends SIGINT once ``marker`` showed on the terminal."""
    sent: list[bool] = []

    def when(terminal: bytes, process: subprocess.Popen[bytes]) -> None:
        if not sent and marker in terminal:
            process.send_signal(signal.SIGINT)
            sent.append(True)

    return when


INTERRUPTED = (
    "interrupted (SIGINT): no new record starts; records in flight stop before their next "
    "step (a second signal ends choreo at once)"
)


def test_an_interruption_says_so_in_one_line(workdir: Path) -> None:
    write_input(workdir / "long.jsonl", 3000)
    run = run_on_pty(
        ["run", "pipeline.yaml", "-i", "long.jsonl", "-o", "out.jsonl"],
        workdir,
        when=sigint_once(b" records ("),  # once the bar shows
    )
    assert run.code == 130, run.text
    lines = pieces(run)
    assert sum(INTERRUPTED in line for line in lines) == 1, run.text
    assert any(line.endswith(INTERRUPTED) for line in lines), lines


def test_an_interruption_without_a_terminal(
    workdir: Path, start_choreo: Callable[..., subprocess.Popen[bytes]]
) -> None:
    write_input(workdir / "long.jsonl", 3000)
    process = start_choreo(["run", "pipeline.yaml", "-i", "long.jsonl", "-o", "out.jsonl"])
    out = workdir / "out.jsonl"
    deadline = time.monotonic() + 20
    while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert stderr.decode().splitlines().count(INTERRUPTED) == 1, stderr


def test_fail_fast_says_so_in_one_line(workdir: Path) -> None:
    write_input(workdir / "failing.jsonl", 200, **{"150": {"fail": True}})
    run = run_on_pty(
        ["run", "pipeline.yaml", "-i", "failing.jsonl", "-o", "out.jsonl", "--fail-fast"], workdir
    )
    assert run.code == 3, run.text
    halted = "halted: --fail-fast: the record at line 151 failed (RuntimeError)"
    lines = pieces(run)
    assert sum(halted in line for line in lines) == 1, run.text
    assert halted in lines, lines
    assert_bar_shown_and_removed(run.text)


def test_log_lines_on_a_terminal_have_the_readme_format(workdir: Path) -> None:
    long = "x" * 150  # past 120 columns: not wrapped
    write_input(workdir / "logs.jsonl", 200, **{"3": {"log": long}, "150": {"log": "y"}})
    run = run_on_pty(["run", "pipeline.yaml", "-i", "logs.jsonl", "-o", "out.jsonl"], workdir)
    assert run.code == 0, run.text
    lines = pieces(run)
    assert f"WARNING choreo.step.work: careful with {long} (record 3, line 4)" in lines, lines
    assert "WARNING choreo.step.work: careful with y (record 150, line 151)" in lines, lines
    assert_bar_shown_and_removed(run.text)
