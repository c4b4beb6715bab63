"""`choreo run` interrupted (README "Exit codes"): SIGINT 130, SIGTERM 143, no hole in the output."""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from choreo_cli.version import get_version
from tests.cli.conftest import CHOREO, choreo_env

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py
StartChoreo = Callable[..., "subprocess.Popen[bytes]"]  # start_choreo fixture of conftest.py
ParseResults = Callable[[bytes], list[dict[str, Any]]]

CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

PIPELINE = """\
version: 1
resources:
  log:
    factory: steps:closing_log
steps:
  - name: first
    job: steps:first
  - name: second
    job: steps:second
"""

STEPS = """\
import os
import signal
import time
from pathlib import Path


def closing_log():
    yield "log"
    Path("torn-down").touch()


def first(ctx, record):
    if record.get("kill"):
        # The run is interrupted while this record is between its two steps.
        os.kill(os.getpid(), getattr(signal, record["kill"]))
        time.sleep(0.3)
    time.sleep(record.get("sleep", 0))
    return record.get("n")


def second(ctx, record):
    return "done"
"""


def _jsonl(*records: Any) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a pipe, failing the test when none arrives within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    data = b""
    fd = stream.fileno()
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"no complete line within {timeout} s (got {data!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"the output ended before a complete line (got {data!r})")
        data += chunk
    return data


def _assert_interrupted_line(line: dict[str, Any], before: str) -> None:
    assert line["status"] == "cancelled"
    assert line["error"]["type"] == "Interrupted"
    assert line["error"]["phase"] is None
    assert line["error"]["message"] == f"interrupted before step {before!r}"
    # An interruption adds nothing to the execution errors.
    assert line["errors"] == []


def _assert_no_hole(lines: list[dict[str, Any]]) -> None:
    indices = sorted(line["index"] for line in lines)
    assert indices == list(range(len(indices))), indices


@pytest.fixture
def pipeline(write_pipeline: WritePipeline) -> Path:
    return write_pipeline(PIPELINE, STEPS)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
@pytest.mark.parametrize("workers", [1, 4])
def test_signal_during_a_record_stops_it_before_its_next_step(
    pipeline: Path,
    run_choreo: RunChoreo,
    tmp_path: Path,
    sig: signal.Signals,
    workers: int,
) -> None:
    records = [{"n": i} for i in range(5)] + [{"n": 5, "kill": sig.name}]
    records += [{"n": i, "sleep": 0.05} for i in range(6, 100)]
    run = run_choreo(
        ["run", "pipeline.yaml", "-w", str(workers), "--summary-json", "summary.json"],
        input=_jsonl(*records),
    )
    assert run.code == CODES[sig], run.stderr
    _assert_no_hole(run.lines)
    assert len(run.lines) < 100
    by_index = {line["index"]: line for line in run.lines}
    killer = by_index[5]
    _assert_interrupted_line(killer, "second")
    assert killer["steps"] == {"first": "succeeded", "second": "not_run"}
    for line in run.lines:
        if line["status"] != "succeeded":
            _assert_interrupted_line(line, line["error"]["message"].rsplit(" ", 1)[-1].strip("'"))
    if workers == 1:
        assert run.indices == [0, 1, 2, 3, 4, 5]
        assert run.statuses[:5] == ["succeeded"] * 5
    # Outputs flushed, summary printed, resources torn down.
    assert "records: " in run.stderr
    assert (tmp_path / "torn-down").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] == sig.name
    assert summary["exit_code"] == CODES[sig]
    assert summary["records"]["total"] == len(run.lines)


@pytest.mark.parametrize(
    ("sig", "args"),
    [
        (signal.SIGTERM, ["-w", "1"]),
        (signal.SIGINT, ["-w", "4"]),
        (signal.SIGTERM, ["-w", "4", "--unordered"]),
    ],
    ids=["sigterm-w1", "sigint-w4", "sigterm-w4-unordered"],
)
def test_signal_from_outside_mid_run_leaves_no_hole(
    pipeline: Path,
    start_choreo: StartChoreo,
    tmp_path: Path,
    parse_results: ParseResults,
    sig: signal.Signals,
    args: list[str],
) -> None:
    (tmp_path / "in.jsonl").write_bytes(_jsonl(*({"n": i, "sleep": 0.01} for i in range(2000))))
    process = start_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", *args])
    assert process.stdout is not None
    first = _readline(process.stdout, timeout=10)
    time.sleep(0.2)
    process.send_signal(sig)
    rest, stderr = process.communicate(timeout=20)
    assert process.returncode == CODES[sig], stderr
    assert b"Traceback" not in stderr
    lines = parse_results(first + rest)
    _assert_no_hole(lines)
    assert 1 < len(lines) < 2000
    for line in lines:
        if line["status"] != "succeeded":
            assert line["status"] == "cancelled"
            assert line["error"]["type"] == "Interrupted"
    assert f"records: {len(lines):,} (".encode() in stderr
    assert (tmp_path / "torn-down").exists()


def test_signal_while_waiting_for_input_writes_every_line_owed(
    pipeline: Path, start_choreo: StartChoreo, parse_results: ParseResults
) -> None:
    # stdin is an idle pipe: the run is blocked reading when the signal comes.
    process = start_choreo(["run", "pipeline.yaml"], stdin=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(_jsonl(*({"n": i} for i in range(3))) + _jsonl({"n": 3, "sleep": 0.8}))
    process.stdin.flush()
    received = b"".join(_readline(process.stdout, timeout=10) for _ in range(3))
    # Record 3 is in its first step: it was read, so it gets its line.
    process.send_signal(signal.SIGTERM)
    rest, stderr = process.communicate(timeout=20)
    assert process.returncode == 143, stderr
    lines = parse_results(received + rest)
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    assert [line["status"] for line in lines[:3]] == ["succeeded"] * 3
    _assert_interrupted_line(lines[3], "second")
    assert b"records: 4 (succeeded 3, failed 0, cancelled 1, invalid 0)" in stderr


def test_signal_on_an_idle_stdin_ends_the_run(
    pipeline: Path, start_choreo: StartChoreo, parse_results: ParseResults
) -> None:
    process = start_choreo(["run", "pipeline.yaml"], stdin=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(_jsonl({"n": 0}, {"n": 1}))
    process.stdin.flush()
    received = b"".join(_readline(process.stdout, timeout=10) for _ in range(2))
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=10)
    assert process.returncode == 130, stderr
    lines = parse_results(received + rest)
    assert [line["status"] for line in lines] == ["succeeded", "succeeded"]
    assert b"records: 2 (succeeded 2, failed 0, cancelled 0, invalid 0)" in stderr


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [(signal.SIGTERM, signal.SIGINT, 130), (signal.SIGINT, signal.SIGTERM, 143)],
    ids=["term-then-int", "int-then-term"],
)
def test_a_second_signal_exits_at_once(
    pipeline: Path,
    start_choreo: StartChoreo,
    tmp_path: Path,
    first: signal.Signals,
    second: signal.Signals,
    code: int,
) -> None:
    (tmp_path / "in.jsonl").write_bytes(_jsonl({"n": 0}, {"n": 1, "sleep": 60}, {"n": 2}))
    process = start_choreo(["run", "pipeline.yaml", "-i", "in.jsonl"])
    assert process.stdout is not None
    _readline(process.stdout, timeout=10)
    time.sleep(0.2)
    process.send_signal(first)
    time.sleep(0.3)
    # The first signal waits for the record in flight (its job sleeps a minute).
    assert process.poll() is None
    started = time.monotonic()
    process.send_signal(second)
    assert process.wait(timeout=10) == code
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("workers", [1, 2])
def test_keyboard_interrupt_in_a_job_interrupts_the_run(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, workers: int
) -> None:
    write_pipeline(
        "version: 1\nsteps:\n  - name: one\n    job: steps:job\n  - name: two\n    job: steps:job\n",
        """\
        def job(ctx, record):
            if record == 2 and ctx.step == "one":
                raise KeyboardInterrupt
            return record
        """,
    )
    run = run_choreo(["run", "pipeline.yaml", "-w", str(workers)], input=_jsonl(*range(10)))
    assert run.code == 130, run.stderr
    _assert_no_hole(run.lines)
    assert len(run.lines) < 10
    stopped = run.lines[2]
    assert stopped["status"] == "cancelled"
    assert stopped["error"]["type"] == "Interrupted"
    assert stopped["error"]["message"] == "interrupted during step 'one'"
    assert stopped["steps"] == {"one": "cancelled", "two": "not_run"}
    if workers == 1:
        assert run.statuses == ["succeeded", "succeeded", "cancelled"]


def test_an_interruption_error_names_the_step_it_stopped_before(
    pipeline: Path, run_choreo: RunChoreo
) -> None:
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl({"n": 0, "kill": "SIGTERM"}))
    assert run.code == 143
    _assert_interrupted_line(run.lines[0], "second")
    assert run.lines[0]["error"]["step"] == "second"


# -- a signal while choreo starts ------------------------------------------------------------
#
# choreo holds SIGINT and SIGTERM while it imports what it runs with (cli/entry.py): a
# KeyboardInterrupt raised while orjson's extension module initialised crashed the
# interpreter (exit 139) and one raised in any other import printed a traceback.

CHAOS = os.environ.get("CHOREO_CHAOS") == "1"
# A frame of choreo's console entry point: choreo's own code had started.
_IN_MAIN = re.compile(r'entry\.py", line \d+, in main\b')
_DROPPED = (
    "Failed checking if argv[0] is an import path entry\n",
    "Exception ignored in: <function _get_module_lock.<locals>.cb",
)


# What Python prints when a KeyboardInterrupt lands while it sets up __main__ for the script.
_LOADER_FAILED = "failed to set __main__.__loader__"


def _start_up_outcome(code: int, stdout: bytes, stderr: bytes, parse: ParseResults) -> str:
    """How a run that got SIGINT early ended: "choreo" (exit 0 or 130, no traceback, whole
    lines), "signal" (ended by SIGINT's default action, before Python set its handler: the
    shell's 130), or "interpreter" (a KeyboardInterrupt raised before choreo's main() ran:
    the interpreter's start-up, site, the installed script's imports, out of choreo's
    reach). Fails the test on anything else: a crash, another exit code, a traceback once
    choreo's main() ran, a line cut short."""
    text = stderr.decode("utf-8", errors="replace")
    lines = parse(stdout)  # every line whole and valid
    _assert_no_hole(lines)
    if not stdout and (
        _LOADER_FAILED in text or (code == 1 and text.strip() == "KeyboardInterrupt")
    ):
        # Python's own start-up, before it ran the script's first line: it prints the bare
        # exception name (choreo's code prints a traceback or exits 130, never this).
        return "interpreter"
    if "Traceback" not in text:
        if code in (0, 130):
            return "choreo"
        if code == -signal.SIGINT:
            return "signal"
    elif not _IN_MAIN.search(text) and (
        (code in (-signal.SIGINT, 1) and not stdout and text.rstrip().endswith("KeyboardInterrupt"))
        # Python's own start-up, or the import system's lock callback (an import before
        # choreo's main(), or a step module's), prints the KeyboardInterrupt and goes on.
        or (code in (0, 130) and text.startswith(_DROPPED))
    ):
        return "interpreter"
    raise AssertionError(f"exit {code} after an early SIGINT:\n{text[-2000:]}")


def _interrupt_start_ups(
    command: list[str], cwd: Path, runs: int, seed: int, parse: ParseResults
) -> dict[str, int]:
    """Start ``command`` ``runs`` times, SIGINT each after a random delay; the outcomes.

    The delays span 0-200 ms, or the time one whole run takes here if longer (a loaded
    machine starts Python slower): most signals then come while choreo runs, as on an
    idle machine.
    """
    rng = random.Random(seed)
    started = time.monotonic()
    subprocess.run(command, cwd=cwd, env=choreo_env(), capture_output=True, timeout=60)
    window = max(0.2, time.monotonic() - started)
    counts = dict.fromkeys(("choreo", "signal", "interpreter"), 0)
    for _ in range(runs):
        process = subprocess.Popen(
            command, cwd=cwd, env=choreo_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        time.sleep(rng.uniform(0, window))
        process.send_signal(signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise AssertionError("choreo did not end within 30 s of an early SIGINT") from None
        counts[_start_up_outcome(process.returncode, stdout, stderr, parse)] += 1
    return counts


@pytest.fixture
def small_run(write_pipeline: WritePipeline, tmp_path: Path) -> Path:
    write_pipeline(
        "version: 1\nsteps:\n  - name: a\n    job: steps:job\n",
        "def job(ctx, record):\n    return record\n",
    )
    (tmp_path / "in.jsonl").write_bytes(_jsonl(*range(20)))
    return tmp_path


def test_sigint_at_random_times_in_start_up_never_crashes(
    small_run: Path, parse_results: ParseResults
) -> None:
    command = [str(CHOREO), "run", "pipeline.yaml", "-i", "in.jsonl"]
    counts = _interrupt_start_ups(command, small_run, 40, seed=14, parse=parse_results)
    # Many signals came while choreo ran (fewer on a loaded machine, where Python's own
    # start-up takes longer): enough that the test is about choreo.
    assert counts["choreo"] >= 10, counts


@pytest.mark.slow
@pytest.mark.skipif(not CHAOS, reason="set CHOREO_CHAOS=1 (make chaos)")
@pytest.mark.parametrize("how", ["script", "module"])
def test_sigint_at_random_times_in_start_up_hundreds_of_times(
    small_run: Path, parse_results: ParseResults, how: str
) -> None:
    front = [str(CHOREO)] if how == "script" else [sys.executable, "-m", "choreo_cli"]
    command = [*front, "run", "pipeline.yaml", "-i", "in.jsonl"]
    counts = _interrupt_start_ups(command, small_run, 300, seed=1414, parse=parse_results)
    assert counts["choreo"] >= 150, counts  # most signals came while choreo ran


def _interrupted_while_held(
    tmp_path: Path, sig: signal.Signals, *args: str
) -> tuple[int, str, str]:
    """Run ``choreo ARGS`` in-process of a script that sends itself ``sig`` while choreo
    holds the signals (as it builds its streams, the first thing it does)."""
    script = f"""
import os, sys
from choreo_cli.cli import entry, streams

built = streams.Streams.for_process

def for_process():
    os.kill(os.getpid(), {int(sig)})  # held: nothing happens yet
    return built()

streams.Streams.for_process = for_process
sys.argv = ["choreo", *{list(args)!r}]
entry.main()
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=choreo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    ("sig", "args"),
    [
        (signal.SIGINT, ["run", "pipeline.yaml", "-i", "in.jsonl"]),
        (signal.SIGTERM, ["run", "pipeline.yaml", "-i", "in.jsonl"]),
        (signal.SIGINT, ["--version"]),
        (signal.SIGTERM, ["validate", "pipeline.yaml"]),
    ],
    ids=["run-int", "run-term", "version-int", "validate-term"],
)
def test_a_signal_held_during_start_up_ends_the_command_once_released(
    small_run: Path, sig: signal.Signals, args: list[str]
) -> None:
    code, stdout, stderr = _interrupted_while_held(small_run, sig, *args)
    # --version is over once its line is out: the signal ends it then.
    expected = f"choreo {get_version()}\n" if args == ["--version"] else ""
    assert (code, stdout, stderr) == (CODES[sig], expected, "")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_an_ignored_sigint_stays_ignored_through_start_up(small_run: Path) -> None:
    """A shell's background job starts with SIGINT ignored: choreo does not act on it."""
    for delay in (0.0, 0.03, 0.06, 0.09, 0.12):
        process = subprocess.Popen(
            [str(CHOREO), "--version"],
            env=choreo_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_ignore_sigint,  # in the child, before choreo starts
        )
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
        assert (process.returncode, stdout.startswith(b"choreo "), stderr) == (0, True, b"")


@pytest.mark.parametrize(
    ("args", "files"),
    [
        (["validate", "pipeline.yaml"], {}),
        (
            ["test"],
            {
                "pipeline.test.yaml": "version: 1\npipeline: pipeline.yaml\ntests:\n"
                "  - name: t\n    input: [1]\n    expect: [{status: succeeded}]\n"
            },
        ),
    ],
    ids=["validate", "test"],
)
def test_ctrl_c_in_a_command_without_handlers_exits_130(
    tmp_path: Path, args: list[str], files: dict[str, str]
) -> None:
    """Ctrl-C while `validate` imports a slow module or `test` runs: exit 130 and nothing
    else, as `run` does (not click's "Aborted!" and exit 1, nor a traceback)."""
    (tmp_path / "pipeline.yaml").write_text("version: 1\nsteps:\n  - name: a\n    job: slow:job\n")
    (tmp_path / "slow.py").write_text(
        "import pathlib, time\npathlib.Path('started').touch()\ntime.sleep(30)\n"
        "def job(ctx, record):\n    return record\n"
    )
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    process = subprocess.Popen(
        [str(CHOREO), *args],
        cwd=tmp_path,
        env=choreo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert (process.returncode, stderr.decode()) == (130, "")
    assert b"Traceback" not in stdout
