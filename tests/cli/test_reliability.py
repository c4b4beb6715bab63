"""Issue 5 through the real command: --checkpoint, --rejects, retry, timeout, dry run, faults.

The randomized fault runs (signals, kill -9) do a few seeded iterations here and many
under ``make chaos`` (CHOREO_CHAOS=1, the ``slow`` marker).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]
StartChoreo = Callable[..., "subprocess.Popen[bytes]"]
ParseResults = Callable[[bytes], list[dict[str, Any]]]

CHAOS = os.environ.get("CHOREO_CHAOS") == "1"
SIGNAL_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _jsonl(*records: Any) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def _marked(checkpoint: Path) -> set[int]:
    """The input lines a checkpoint file marks finished (a last line cut short ignored)."""
    if not checkpoint.exists():
        return set()
    lines = checkpoint.read_bytes().split(b"\n")[1:-1]
    found: set[int] = set()
    for raw in lines:
        for part in raw.decode().split():
            first, _, last = part.partition("-")
            found.update(range(int(first), int(last or first) + 1))
    return found


def _finished(lines: list[dict[str, Any]]) -> list[int]:
    """Input line numbers of results that are not interruptions."""
    return [
        line["line"]
        for line in lines
        if not (line["error"] is not None and line["error"]["type"] == "Interrupted")
    ]


# Records: {"n": N} succeed, {"fail": ...} fail, "sleep" slows a record down. Each job
# call appends "N" to calls.txt, so a test can tell which records ran and how often.
STEPS = """\
import time
from pathlib import Path


def job(ctx, record):
    with open("calls.txt", "a") as f:
        f.write(f"{record.get('n')}\\n")
    time.sleep(record.get("sleep", 0))
    if record.get("fail"):
        raise ValueError(record["fail"])
    return record.get("n")


def noop(ctx, record):
    return None
"""
PIPELINE = "version: 1\nsteps:\n  - name: one\n    job: steps:job\n"


def _calls(tmp_path: Path) -> list[int]:
    path = tmp_path / "calls.txt"
    if not path.exists():
        return []
    return [int(n) for n in path.read_text().split()]


@pytest.fixture
def basic(write_pipeline: WritePipeline) -> Path:
    return write_pipeline(PIPELINE, STEPS)


# -- --checkpoint -------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["-i", "-"]], ids=["default", "dash"])
def test_checkpoint_on_stdin_exits_2(basic: Path, run_choreo: RunChoreo, args: list[str]) -> None:
    run = run_choreo(["run", "pipeline.yaml", *args, "--checkpoint", "c"], input=_jsonl({"n": 1}))
    assert (run.code, run.lines) == (2, [])
    assert run.stderr == (
        "error: --checkpoint needs --input FILE: standard input cannot be read again on a rerun\n"
    )


def test_checkpoint_refuses_other_pipeline_content_and_other_data(
    basic: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(_jsonl({"n": 1}, {"n": 2}))
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "--checkpoint", "run.ckpt"]
    assert run_choreo(args).code == 0
    basic.write_text(PIPELINE + "description: changed\n", encoding="utf-8")
    other_pipeline = run_choreo(args)
    assert (other_pipeline.code, other_pipeline.lines) == (2, [])
    assert other_pipeline.stderr == (
        "error: checkpoint run.ckpt was made for another version of the pipeline file — "
        "delete it to start over, or restore the pipeline it was made with\n"
    )
    basic.write_text(PIPELINE, encoding="utf-8")
    source.write_bytes(_jsonl({"n": 1}, {"n": 3}))
    other_data = run_choreo(args)
    assert (other_data.code, other_data.lines) == (2, [])
    assert other_data.stderr == (
        "error: checkpoint run.ckpt was made for other input data (its first 18 bytes "
        "differ) — delete it to start over, or give the input it was made for\n"
    )
    assert _calls(tmp_path) == [1, 2]


def test_a_rerun_skips_finished_records_and_counts_them_resumed(
    basic: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_bytes(b'{"n": 1}\n\n{"n": 2, "fail": "no"}\nnot json\n{"n": 4}\n')
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "--checkpoint", "run.ckpt"]
    first = run_choreo([*args, "--summary-json", "first.json"])
    assert first.code == 1
    assert first.statuses == ["succeeded", "failed", "invalid", "succeeded"]
    # Any status but interrupted is finished, failed and invalid records included.
    assert _marked(tmp_path / "run.ckpt") == {1, 3, 4, 5}
    again = run_choreo([*args, "--summary-json", "again.json"])
    assert (again.code, again.lines) == (0, [])
    assert "resumed 4" in again.stderr
    summary = json.loads((tmp_path / "again.json").read_text())
    assert summary["records"] == {
        "total": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "invalid": 0,
        "resumed": 4,
    }
    assert _calls(tmp_path) == [1, 2, 4]


def test_an_input_that_only_grew_at_its_end_resumes(
    basic: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(_jsonl({"n": 0}, {"n": 1}))
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "--checkpoint", "run.ckpt"]
    assert run_choreo(args).code == 0
    with open(source, "ab") as f:
        f.write(_jsonl(*({"n": n} for n in range(2, 3000))))  # well past 64 KiB
    grown = run_choreo([*args, "--summary-json", "s.json"])
    assert grown.code == 0
    assert grown.indices == list(range(2, 3000))  # original indices and lines kept
    assert [line["line"] for line in grown.lines] == list(range(3, 3001))
    assert json.loads((tmp_path / "s.json").read_text())["records"]["resumed"] == 2
    assert _calls(tmp_path) == list(range(3000))


def test_interrupted_records_are_not_marked_and_run_again(
    basic: Path, start_choreo: StartChoreo, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_bytes(_jsonl(*({"n": n, "sleep": 0.01} for n in range(400))))
    # A second step that takes no time: a record in flight when the signal comes is in
    # its first step and stops before the second, whether or not others were waiting.
    (tmp_path / "two.yaml").write_text(PIPELINE + "  - name: two\n    job: steps:noop\n")
    args = ["run", "two.yaml", "-i", "in.jsonl", "--checkpoint", "run.ckpt", "-w", "4"]
    process = start_choreo([*args, "-o", "first.jsonl"])
    # Signal once records run (a fixed delay can land before the first record on a slow
    # machine): 20 of the 400 records have started, about a second of work remains.
    deadline = time.monotonic() + 20
    while len(_calls(tmp_path)) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 143, stderr
    first = json.loads("[" + ",".join((tmp_path / "first.jsonl").read_text().split()) + "]")
    interrupted = {line["line"] for line in first} - set(_finished(first))
    assert interrupted, "no record was in flight or waiting when the signal came"
    marked = _marked(tmp_path / "run.ckpt")
    assert marked == set(_finished(first))
    resumed = run_choreo([*args, "-o", "second.jsonl"])
    assert resumed.code == 0, resumed.stderr
    second = [
        line["line"]
        for line in json.loads(
            "[" + ",".join((tmp_path / "second.jsonl").read_text().split()) + "]"
        )
    ]
    assert interrupted <= set(second)
    assert sorted(_finished(first) + second) == list(range(1, 401))


def test_a_checkpoint_line_cut_short_by_a_crash_is_ignored(
    basic: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_bytes(
        _jsonl({"n": 1}, {"n": 2}, {"n": 3, "fail": "stop"}, {"n": 4}, {"n": 5})
    )
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "--checkpoint", "run.ckpt"]
    assert run_choreo([*args, "-w", "1"]).code == 1
    checkpoint = tmp_path / "run.ckpt"
    header = checkpoint.read_bytes().split(b"\n")[0]
    # A crash while "1-2" and then "45" (say) were being written: "4" is what is left.
    checkpoint.write_bytes(header + b"\n1-2\n4")
    # --fail-fast stops after line 3, so line 4 is still not run when this run ends.
    stopped = run_choreo([*args, "--fail-fast"])
    assert (stopped.code, [line["line"] for line in stopped.lines]) == (3, [3])
    last = run_choreo(args)
    assert last.code == 0, last.stderr
    assert [line["line"] for line in last.lines] == [4, 5]
    assert _calls(tmp_path) == [1, 2, 3, 4, 5, 3, 4, 5]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_output_that_refuses_writes_marks_nothing(
    basic: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_bytes(_jsonl(*({"n": n} for n in range(50))))
    run = run_choreo(
        ["run", "pipeline.yaml", "-i", "in.jsonl", "-o", "/dev/full", "--checkpoint", "c"]
    )
    assert run.code == 1
    assert "error: cannot write results to /dev/full: No space left on device" in run.stderr
    assert _marked(tmp_path / "c") == set()


def test_a_dry_run_marks_nothing(basic: Path, run_choreo: RunChoreo, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(_jsonl({"n": 1}, {"n": 2}))
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "--checkpoint", "c"]
    dry = run_choreo([*args, "--dry-run"])
    assert dry.code == 0 and len(dry.lines) == 2
    assert _marked(tmp_path / "c") == set()
    real = run_choreo(args)
    assert (real.code, real.indices) == (0, [0, 1])
    assert _calls(tmp_path) == [1, 2]


def test_a_checkpoint_that_is_no_regular_file_exits_2(
    basic: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_bytes(_jsonl({"n": 1}))
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "--checkpoint", "/dev/zero"])
    assert run.code == 2
    assert run.stderr == "error: checkpoint /dev/zero is not a regular file — give a file path\n"


# -- --rejects ----------------------------------------------------------------------------


def test_rejects_bytes_order_and_feeding_them_back(
    basic: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    rng = random.Random(5)
    lines: list[bytes] = []
    failing: list[bytes] = []
    for n in range(120):
        record: dict[str, Any] = {"n": n, "sleep": rng.choice([0, 0, 0.002])}
        if rng.random() < 0.3:
            record["fail"] = f"bad {n}"
        ending = rng.choice([b"\n", b"\r\n"])
        raw = json.dumps(record).encode() + ending
        if n == 57:
            raw = b"{not json" + ending
        lines.append(raw)
        if rng.random() < 0.1:
            lines.append(ending)  # a blank line: no record, never a reject
        if "fail" in record or n == 57:
            failing.append(raw)
    last = b'{"n": 999, "fail": "last"}'  # no line ending
    (tmp_path / "in.jsonl").write_bytes(b"".join(lines) + last)
    run = run_choreo(
        ["run", "pipeline.yaml", "-i", "in.jsonl", "-w", "4", "--unordered", "--rejects", "r"]
    )
    assert run.code == 1
    assert (tmp_path / "r").read_bytes() == b"".join(failing) + last + b"\n"
    (tmp_path / "calls.txt").unlink()
    again = run_choreo(["run", "pipeline.yaml", "-i", "r", "--rejects", "r2"])
    assert again.code == 1
    assert again.statuses == [
        "invalid" if raw.startswith(b"{not") else "failed" for raw in [*failing, last]
    ]
    expected = sorted(json.loads(raw)["n"] for raw in [*failing, last] if b"not json" not in raw)
    assert sorted(_calls(tmp_path)) == expected
    assert (tmp_path / "r2").read_bytes() == (tmp_path / "r").read_bytes()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_rejects_file_that_refuses_writes_is_reported(
    basic: Path, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    run = run_choreo(
        ["run", "pipeline.yaml", "--rejects", "/dev/full"],
        input=_jsonl({"n": 1, "fail": "x"}, {"n": 2}),
    )
    assert run.code == 1
    assert run.statuses == ["failed", "succeeded"]
    assert "error: cannot write rejects to /dev/full: No space left on device" in run.stderr


# -- retry and timeout --------------------------------------------------------------------

RETRY_STEPS = """\
import asyncio
import builtins
import time
from pathlib import Path

from choreo_cli import Cancel


def flaky(ctx, record):
    # Fails record["fails"] times per record, with the exception named in record["raise"].
    counter = Path(f"count-{ctx.index}")
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    if n <= record.get("fails", 0):
        kind = record.get("raise", "ConnectionError")
        if kind == "Cancel":
            raise Cancel("no")
        raise getattr(builtins, kind)(f"attempt {n}")
    return n


def sleepy(ctx, record):
    seconds = record.get("sleep", 0)
    time.sleep(seconds)
    if seconds:
        Path(f"late-{ctx.index}").write_text(str(ctx.cancelled))
    return "done"


async def asleepy(ctx, record):
    try:
        await asyncio.sleep(record.get("sleep", 0))
    except asyncio.CancelledError:
        Path(f"cancelled-{ctx.index}").touch()
        raise
    return "done"
"""


def test_retry_through_the_command(write_pipeline: WritePipeline, run_choreo: RunChoreo) -> None:
    write_pipeline(
        """\
        version: 1
        steps:
          - name: load
            job: steps:flaky
            retry: {attempts: 3, delay: 0.01, on: [ConnectionError, TimeoutError]}
        """,
        RETRY_STEPS,
    )
    records = [
        {"fails": 0},
        {"fails": 2},
        {"fails": 5},
        {"fails": 1, "raise": "ValueError"},
        {"fails": 1, "raise": "Cancel"},
    ]
    run = run_choreo(["run", "pipeline.yaml", "--log-level", "WARNING"], input=_jsonl(*records))
    assert run.code == 1
    assert run.statuses == ["succeeded", "succeeded", "failed", "failed", "cancelled"]
    assert [line["attempts"] for line in run.lines] == [
        {"load": 1},
        {"load": 3},
        {"load": 3},
        {"load": 1},
        {"load": 1},
    ]
    assert run.lines[2]["error"] == {
        "step": "load",
        "phase": "job",
        "type": "ConnectionError",
        "message": "attempt 3",
    }
    assert len(run.lines[2]["errors"]) == 1
    logged = re.findall(
        r"choreo\.step\.load: attempt (\d) of 3 failed \((\w+): ([^)]*)\)", run.stderr
    )
    assert logged == [
        ("1", "ConnectionError", "attempt 1"),
        ("2", "ConnectionError", "attempt 2"),
        ("1", "ConnectionError", "attempt 1"),
        ("2", "ConnectionError", "attempt 2"),
    ]


def test_timeout_through_the_command(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    write_pipeline(
        """\
        version: 1
        steps:
          - name: sync
            job: steps:sleepy
            timeout: 0.2
          - name: async
            job: steps:asleepy
            timeout: 0.2
        """,
        RETRY_STEPS,
    )
    records = [{}, {"sleep": 1.5}, {}, {"sleep": 30}]
    started = time.monotonic()
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl(*records))
    elapsed = time.monotonic() - started
    assert run.code == 1
    assert run.statuses == ["succeeded", "failed", "succeeded", "failed"]
    assert run.lines[1]["steps"] == {"sync": "failed", "async": "not_run"}
    assert run.lines[1]["error"] == {
        "step": "sync",
        "phase": "job",
        "type": "StepTimeout",
        "message": "steps:sleepy ran past the step's timeout of 0.2 s",
    }
    # A callable hung for 30 s does not hold the run (nor its exit) back.
    assert elapsed < 10
    if (tmp_path / "late-1").exists():  # the abandoned callable saw ctx.cancelled
        assert (tmp_path / "late-1").read_text() == "True"


def test_async_timeout_cancels_the_coroutine(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    write_pipeline(
        "version: 1\nsteps:\n  - name: a\n    job: steps:asleepy\n    timeout: 0.1\n",
        RETRY_STEPS,
    )
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl({"sleep": 20}, {}))
    assert run.statuses == ["failed", "succeeded"]
    assert run.lines[0]["error"]["type"] == "StepTimeout"
    assert (tmp_path / "cancelled-0").exists()


def test_validate_refuses_what_run_refuses(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    def validate() -> tuple[int, str]:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "choreo"), "validate", "pipeline.yaml"],
            capture_output=True,
            cwd=tmp_path,
            check=False,
        )
        return done.returncode, done.stdout.decode() + done.stderr.decode()

    write_pipeline(
        "version: 1\nsteps:\n  - name: s\n    job: steps:sleepy\n    retry: {attempts: 1}\n",
        RETRY_STEPS,
    )
    run = run_choreo(["run", "pipeline.yaml"], input=b"{}\n")
    assert run.code == 2 and "'attempts' must be at least 2, not 1" in run.stderr
    code, said = validate()
    assert code == 1 and "'attempts' must be at least 2, not 1" in said

    write_pipeline(
        "version: 1\nsteps:\n  - name: s\n    job: steps:sleepy\n"
        "    retry: {attempts: 2, on: [KeyboardInterrupt, 'choreo_cli:Cancel']}\n",
        RETRY_STEPS,
    )
    run = run_choreo(["run", "pipeline.yaml"], input=b"{}\n")
    assert run.code == 2
    assert (
        "retry.on: KeyboardInterrupt is not an Exception class: it is never retried" in run.stderr
    )
    code, said = validate()
    assert code == 1
    assert "retry.on: KeyboardInterrupt is not an Exception class: it is never retried" in said
    assert "retry.on: Cancel cancels the record: it is never retried" in said


# -- dry run ------------------------------------------------------------------------------


def test_dry_run_with_retry_and_timeout_calls_no_job(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path
) -> None:
    write_pipeline(
        """\
        version: 1
        resources:
          tag:
            factory: steps:tag
        steps:
          - name: load
            precheck: steps:check
            job: steps:job
            retry: {attempts: 3}
            timeout: 5
        """,
        """\
        from pathlib import Path

        from choreo_cli import Skip


        def tag():
            Path("built").touch()
            return "t"


        def check(ctx, record):
            Path(f"pre-{ctx.index}-{ctx.resources.tag}").touch()
            if record == "skip":
                raise Skip("exists")


        def job(ctx, record):
            Path("job-called").touch()
        """,
    )
    run = run_choreo(["run", "pipeline.yaml", "--dry-run"], input=_jsonl("a", "skip"))
    assert run.code == 0
    assert [line["steps"] for line in run.lines] == [{"load": "would_run"}, {"load": "skipped"}]
    assert (tmp_path / "built").exists()
    assert (tmp_path / "pre-0-t").exists() and (tmp_path / "pre-1-t").exists()
    assert not (tmp_path / "job-called").exists()


# -- fault injection: what callables raise ------------------------------------------------

RAISING_STEPS = """\
import sys


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no str")


class Deep(BaseException):
    pass


RAISES = {
    "value": lambda: ValueError("v"),
    "system_exit": lambda: SystemExit(4),
    "generator_exit": lambda: GeneratorExit(),
    "base": lambda: Deep("deep"),
    "memory": lambda: MemoryError(),
    "recursion": lambda: RecursionError("r"),
    "unprintable": lambda: Unprintable(),
    "surrogate": lambda: ValueError("bad \\udcff"),
    "keyboard": lambda: KeyboardInterrupt(),
}


def precheck(ctx, record):
    if record.get("where") == "precheck":
        raise RAISES[record["raise"]]()


def job(ctx, record):
    if record.get("where") == "job":
        raise RAISES[record["raise"]]()
    return 1
"""

FAULTS = [
    ("value", "ValueError", "v"),
    ("system_exit", "SystemExit", "4"),
    ("generator_exit", "GeneratorExit", ""),
    ("base", "Deep", "deep"),
    ("memory", "MemoryError", ""),
    ("recursion", "RecursionError", "r"),
    ("unprintable", "Unprintable", "<str() of the exception failed: RuntimeError('no str')>"),
    ("surrogate", "ValueError", "bad \\udcff"),
]


@pytest.mark.parametrize("where", ["precheck", "job"])
def test_whatever_a_callable_raises_costs_only_its_record(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, where: str
) -> None:
    write_pipeline(
        "version: 1\nsteps:\n  - name: s\n    precheck: steps:precheck\n    job: steps:job\n",
        RAISING_STEPS,
    )
    records = [{"where": where, "raise": name} for name, _, _ in FAULTS] + [{}]
    run = run_choreo(["run", "pipeline.yaml"], input=_jsonl(*records))
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr
    assert run.indices == list(range(len(records)))
    for line, (_, type_name, message) in zip(run.lines, FAULTS, strict=False):
        entry = {"step": "s", "phase": where, "type": type_name, "message": message}
        assert line["errors"] == [entry]
        if where == "job":
            assert (line["status"], line["error"]) == ("failed", entry)
        else:  # choreograph parity: a precheck's exception skips the job
            assert (line["status"], line["steps"]) == ("succeeded", {"s": "skipped"})
    assert run.lines[-1]["status"] == "succeeded"
    assert run.code == (1 if where == "job" else 0)


@pytest.mark.parametrize("where", ["precheck", "job"])
def test_keyboard_interrupt_in_a_callable_exits_130(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, where: str
) -> None:
    write_pipeline(
        "version: 1\nsteps:\n  - name: s\n    precheck: steps:precheck\n    job: steps:job\n",
        RAISING_STEPS,
    )
    run = run_choreo(
        ["run", "pipeline.yaml"], input=_jsonl({}, {"where": where, "raise": "keyboard"}, {})
    )
    assert run.code == 130
    assert run.statuses[:2] == ["succeeded", "cancelled"]
    assert run.lines[1]["error"]["type"] == "Interrupted"
    assert len(run.lines) <= 3


RESOURCE_STEPS = """\
from pathlib import Path


def good():
    yield "good"
    Path("good-closed").touch()


def broken():
    raise ConnectionError("database is down")


def bad_teardown():
    yield "bad"
    raise OSError("flush failed")


def job(ctx, record):
    return ctx.resources.good
"""


@pytest.mark.parametrize("scope", ["pipeline", "worker"])
def test_a_failing_resource_factory_exits_2_naming_it(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path, scope: str
) -> None:
    write_pipeline(
        f"""\
        version: 1
        resources:
          good: {{factory: steps:good}}
          db: {{factory: steps:broken, scope: {scope}}}
        steps:
          - name: s
            job: steps:job
        """,
        RESOURCE_STEPS,
    )
    run = run_choreo(["run", "pipeline.yaml", "-w", "3"], input=_jsonl(1, 2))
    assert (run.code, run.lines) == (2, [])
    assert "'db'" in run.stderr and "steps:broken" in run.stderr
    assert "ConnectionError: database is down" in run.stderr
    assert (tmp_path / "good-closed").exists()  # what was built is closed


@pytest.mark.parametrize("workers", ["1", "4"])
def test_a_failing_teardown_is_reported_and_exits_1(
    write_pipeline: WritePipeline, run_choreo: RunChoreo, tmp_path: Path, workers: str
) -> None:
    write_pipeline(
        """\
        version: 1
        resources:
          good: {factory: steps:good}
          bad: {factory: steps:bad_teardown, scope: worker}
        steps:
          - name: s
            job: steps:job
        """,
        RESOURCE_STEPS,
    )
    run = run_choreo(["run", "pipeline.yaml", "-w", workers], input=_jsonl(1, 2, 3))
    assert run.code == 1
    assert run.statuses == ["succeeded"] * 3
    assert "flush failed" in run.stderr and "(results may not be durable)" in run.stderr
    assert (tmp_path / "good-closed").exists()


# -- fault injection: signals at random moments -------------------------------------------

SIGNAL_ITERATIONS = 3


def _first_line(stream: IO[bytes]) -> bytes:
    """The first line of a pipe, read without buffering past it (communicate() reads the rest)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(stream.fileno(), 1)
        if not chunk:
            break
        data += chunk
    return data


def _signal_run(
    seed: int, start_choreo: StartChoreo, tmp_path: Path, parse_results: ParseResults
) -> None:
    rng = random.Random(seed)
    count = 2000  # lasts longer than the wait below, whatever the workers
    records = [{"n": n, "sleep": rng.choice([0, 0.001, 0.005])} for n in range(count)]
    (tmp_path / "in.jsonl").write_bytes(_jsonl(*records))
    sig = rng.choice([signal.SIGINT, signal.SIGTERM])
    args = ["-w", rng.choice(["1", "2", "4"])]
    if rng.random() < 0.5:
        args.append("--unordered")
    process = start_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", *args])
    assert process.stdout is not None
    # Wait until records run (the handlers are installed), then pick a moment.
    first = _first_line(process.stdout)
    time.sleep(rng.uniform(0, 0.5))
    process.send_signal(sig)
    rest, stderr = process.communicate(timeout=30)
    context = f"seed {seed}, {sig.name}, {args}: {stderr.decode()[-2000:]}"
    lines = parse_results(first + rest)
    if process.returncode == 0:
        assert len(lines) == count, context  # the signal came after the last record
        return
    assert process.returncode == SIGNAL_CODES[sig], context
    assert b"Traceback" not in stderr, context
    indices = sorted(line["index"] for line in lines)
    assert indices == list(range(len(indices))), context  # no hole, nothing twice
    for line in lines:
        if line["status"] != "succeeded":
            assert line["status"] == "cancelled", context
            assert line["error"]["type"] == "Interrupted", context
    assert f"records: {len(lines):,} (".encode() in stderr, context


@pytest.mark.parametrize("seed", range(SIGNAL_ITERATIONS))
def test_signal_at_a_random_moment(
    basic: Path,
    start_choreo: StartChoreo,
    tmp_path: Path,
    parse_results: ParseResults,
    seed: int,
) -> None:
    _signal_run(seed, start_choreo, tmp_path, parse_results)


@pytest.mark.slow
@pytest.mark.skipif(not CHAOS, reason="long randomized run: make chaos")
def test_signal_at_a_random_moment_chaos(
    basic: Path, start_choreo: StartChoreo, tmp_path: Path, parse_results: ParseResults
) -> None:
    for seed in range(1000, 1150):
        _signal_run(seed, start_choreo, tmp_path, parse_results)


TEARDOWN_STEPS = """\
import time
from pathlib import Path


def slow_close():
    yield "r"
    Path("teardown-started").touch()
    time.sleep(1)
    Path("torn-down").touch()


def job(ctx, record):
    return ctx.resources.r
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_during_resource_teardown_lets_it_finish(
    write_pipeline: WritePipeline, start_choreo: StartChoreo, tmp_path: Path, sig: signal.Signals
) -> None:
    write_pipeline(
        "version: 1\nresources: {r: {factory: steps:slow_close}}\n"
        "steps:\n  - name: s\n    job: steps:job\n",
        TEARDOWN_STEPS,
    )
    (tmp_path / "in.jsonl").write_bytes(_jsonl(1, 2, 3))
    process = start_choreo(["run", "pipeline.yaml", "-i", "in.jsonl"])
    deadline = time.monotonic() + 20
    while not (tmp_path / "teardown-started").exists():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(sig)
    out, stderr = process.communicate(timeout=20)
    assert process.returncode == SIGNAL_CODES[sig], stderr
    assert b"Traceback" not in stderr
    assert (tmp_path / "torn-down").exists()
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["succeeded"] * 3


# -- fault injection: kill -9 and resume, checked in SQLite -------------------------------

SQLITE_PIPELINE = """\
version: 1
resources:
  db:
    factory: steps:connect
    scope: worker
steps:
  - name: insert
    precheck: steps:exists
    job: steps:insert
"""

SQLITE_STEPS = """\
import sqlite3
import time

from choreo_cli import Skip


def connect():
    db = sqlite3.connect("rows.db", timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS rows (id INTEGER)")  # no UNIQUE: duplicates show
    try:
        yield db
    finally:
        db.close()


def exists(ctx, record):
    if ctx.resources.db.execute("SELECT 1 FROM rows WHERE id = ?", (record["id"],)).fetchone():
        raise Skip("exists")


def insert(ctx, record):
    time.sleep(record["sleep"])
    ctx.resources.db.execute("INSERT INTO rows (id) VALUES (?)", (record["id"],))
"""


def _lines_of(path: Path, *, killed: bool) -> list[dict[str, Any]]:
    """Result lines of an output file; after kill -9 a last line cut short is left out."""
    data = path.read_bytes() if path.exists() else b""
    pieces = data.split(b"\n")
    if pieces[-1]:
        assert killed, f"{path} ends without a newline after a clean exit"
    return [json.loads(piece) for piece in pieces[:-1]]


def _kill_and_resume(seed: int, kills: int, start_choreo: StartChoreo, tmp_path: Path) -> None:
    rng = random.Random(seed)
    count = 300
    records = [{"id": n, "sleep": rng.choice([0, 0.001, 0.003])} for n in range(count)]
    (tmp_path / "in.jsonl").write_bytes(_jsonl(*records))
    checkpoint = tmp_path / "run.ckpt"
    workers = rng.choice(["1", "3"])
    outputs: list[list[dict[str, Any]]] = []
    for attempt in range(kills + 1):
        last = attempt == kills
        before = _marked(checkpoint)
        out = tmp_path / f"out-{attempt}.jsonl"
        process = start_choreo(
            [
                "run", "pipeline.yaml", "-i", "in.jsonl", "-o", out.name,
                "--checkpoint", checkpoint.name, "-w", workers, "-q",
            ]
        )  # fmt: skip
        if not last:
            time.sleep(rng.uniform(0.1, 1.0))
            process.kill()
        _, stderr = process.communicate(timeout=60)
        context = f"seed {seed}, run {attempt}, -w {workers}: {stderr.decode()[-2000:]}"
        assert b"Traceback" not in stderr, context
        if last:
            assert process.returncode == 0, context
        lines = _lines_of(out, killed=not last)
        done = {line["line"] for line in lines}
        # A rerun never runs a record the checkpoint marked finished before it started.
        assert not done & before, context
        # The checkpoint never claims a record whose result line is not in an output.
        outputs.append(lines)
        written = {line["line"] for run in outputs for line in run}
        assert _marked(checkpoint) <= written, context
    everything = [line["line"] for run in outputs for line in run]
    assert set(everything) == set(range(1, count + 1))  # every input line has a result
    assert _marked(checkpoint) == set(range(1, count + 1))
    with sqlite3.connect(tmp_path / "rows.db") as db:
        rows = db.execute("SELECT id, COUNT(*) FROM rows GROUP BY id").fetchall()
    db.close()
    assert sorted(rows) == [(n, 1) for n in range(count)], f"seed {seed}"


@pytest.mark.parametrize("seed", range(2))
def test_kill_9_then_resume_lands_every_record_once(
    write_pipeline: WritePipeline, start_choreo: StartChoreo, tmp_path: Path, seed: int
) -> None:
    write_pipeline(SQLITE_PIPELINE, SQLITE_STEPS)
    _kill_and_resume(seed, 2, start_choreo, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not CHAOS, reason="long randomized run: make chaos")
def test_kill_9_then_resume_chaos(
    write_pipeline: WritePipeline, start_choreo: StartChoreo, tmp_path: Path
) -> None:
    write_pipeline(SQLITE_PIPELINE, SQLITE_STEPS)
    for seed in range(100, 125):
        for leftover in [
            *tmp_path.glob("rows.db*"),
            *tmp_path.glob("out-*"),
            *tmp_path.glob("run.ckpt"),
        ]:
            leftover.unlink()
        _kill_and_resume(seed, 6, start_choreo, tmp_path)


# -- fault injection: a closed stdout -----------------------------------------------------


def test_a_closed_stdout_with_a_checkpoint_exits_141_quietly(
    basic: Path, start_choreo: StartChoreo, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_bytes(_jsonl(*({"n": n, "sleep": 0.002} for n in range(3000))))
    process = start_choreo(
        ["run", "pipeline.yaml", "-i", "in.jsonl", "--checkpoint", "c", "-w", "2"]
    )
    assert process.stdout is not None and process.stderr is not None
    received = process.stdout.readline()
    process.stdout.close()
    code = process.wait(timeout=30)
    stderr = process.stderr.read().decode()
    assert code == 141, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert json.loads(received)["line"] in _marked(tmp_path / "c")
    assert len(_marked(tmp_path / "c")) < 3000
