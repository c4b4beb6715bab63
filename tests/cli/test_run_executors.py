"""`choreo run --executor process|dask`: the thread executor's lines, dead workers, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import untimed

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py
StartChoreo = Callable[..., "subprocess.Popen[bytes]"]  # start_choreo fixture of conftest.py
ParseResults = Callable[[bytes], list[dict[str, Any]]]

PIPELINE = """\
version: 1
resources:
  log:
    factory: steps:closing_log
    scope: worker
steps:
  - name: work
    precheck: steps:exists
    job: steps:work
  - name: after
    job: steps:after
"""

STEPS = """\
import os
import time

from choreo_cli import Cancel, Skip


def closing_log():
    yield "log"
    if os.environ.get("CHOREO_T_TEARDOWN") == "fail":
        raise OSError("disk gone")
    with open(f"torn-down-{os.getpid()}", "w"):
        pass


def exists(ctx, record):
    if record.get("skip"):
        raise Skip("exists", data=record["id"])


def work(ctx, record):
    if record.get("fail"):
        raise ValueError(f"bad record {record['id']}")
    if record.get("cancel"):
        raise Cancel("cancelled on purpose")
    if record.get("die"):
        os._exit(3)
    if record.get("nap"):
        time.sleep(record["nap"])
    return {"double": record["id"] * 2}


async def after(ctx, record):
    return ctx.resources.log
"""


def write_input(path: Path, count: int, **marks: Any) -> Path:
    lines = []
    for i in range(count):
        record: dict[str, Any] = {"id": i}
        if i % 7 == 3:
            record["skip"] = True
        if i % 11 == 5:
            record["fail"] = True
        if i % 13 == 4:
            record["cancel"] = True
        for name, value in marks.items():
            if name == "die" and i == value:
                record["die"] = True
            elif name == "nap":
                record["nap"] = value
        lines.append(json.dumps(record))
        if i == 20:
            lines.append("{not json")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def pipeline(write_pipeline: WritePipeline) -> Path:
    return write_pipeline(PIPELINE, STEPS)


def test_process_and_dask_write_the_thread_executors_bytes(
    run_choreo: RunChoreo, pipeline: Path, tmp_path: Path
) -> None:
    write_input(tmp_path / "in.jsonl", 80)
    args = ["run", pipeline, "-i", "in.jsonl", "--include-data", "--include-input", "-q"]
    thread = run_choreo(args)
    process = run_choreo([*args, "--executor", "process", "-w", "2"])
    dask = run_choreo([*args, "--executor", "dask", "-w", "2"], timeout=90)
    assert (thread.code, process.code, dask.code) == (1, 1, 1)
    assert sorted(set(thread.statuses)) == ["cancelled", "failed", "invalid", "succeeded"]
    assert process.stdout == thread.stdout
    assert dask.stdout == thread.stdout
    assert (process.stderr, dask.stderr) == ("", "")
    unordered = run_choreo([*args, "--executor", "process", "-w", "2", "--unordered"])
    assert sorted(unordered.stdout.splitlines()) == sorted(thread.stdout.splitlines())
    # Each worker process tore its worker-scoped resource down at the end.
    assert len(list(tmp_path.glob("torn-down-*"))) >= 1 + 2 + 2 + 2


@pytest.mark.parametrize("dry_run", [False, True])
def test_process_and_dask_runs_give_the_thread_runs_lines_counts_and_rejects(
    run_choreo: RunChoreo, pipeline: Path, tmp_path: Path, dry_run: bool
) -> None:
    """`choreo run`'s own path (no --include-*): workers send clean records as counts and
    the lines of records with skipped jobs as written; every other record whole."""
    write_input(tmp_path / "in.jsonl", 400)
    runs = {}
    for executor in ("thread", "process", "dask"):
        args = ["run", pipeline, "-i", "in.jsonl", "--executor", executor, "-w", "2"]
        args += ["--summary-json", f"{executor}.json", "--rejects", f"{executor}.rejects"]
        runs[executor] = run_choreo([*args, *(["--dry-run"] if dry_run else [])], timeout=90)
    thread = runs["thread"]
    statuses = {"cancelled", "failed", "invalid", "succeeded"}
    assert set(thread.statuses) == statuses - ({"failed", "cancelled"} if dry_run else set())
    assert any(line["steps"]["work"] == "skipped" for line in thread.lines)
    for executor in ("process", "dask"):
        run = runs[executor]
        assert run.code == thread.code
        assert run.stdout == thread.stdout, executor
        summaries = [
            json.loads((tmp_path / f"{name}.json").read_text()) for name in ("thread", executor)
        ]
        for summary in summaries:
            untimed(summary)
        assert summaries[0] == summaries[1], executor
        rejects = [(tmp_path / f"{name}.rejects").read_bytes() for name in ("thread", executor)]
        assert rejects[0] == rejects[1], executor


def test_a_worker_that_dies_mid_record_fails_it_and_the_run_goes_on(
    run_choreo: RunChoreo, pipeline: Path, tmp_path: Path
) -> None:
    write_input(tmp_path / "in.jsonl", 300, die=152)
    run = run_choreo(["run", pipeline, "-i", "in.jsonl", "--executor", "process", "-w", "2"])
    assert run.code == 1
    assert run.indices == list(range(301))
    died = [line for line in run.lines if (line["error"] or {}).get("type") == "WorkerDied"]
    killer = [line for line in died if "while running this record" in line["error"]["message"]]
    assert [line["line"] for line in killer] == [154]  # id 152, after the line that is not JSON
    assert "died (exit code 3) while running this record" in killer[0]["error"]["message"]
    # The others lost with it are the unreported tail of its batch: one contiguous run of
    # records ending with the killer (how many depends on the machine's speed).
    indices = [line["index"] for line in died]
    assert indices == list(range(indices[0], killer[0]["index"] + 1))
    assert run.lines[-1]["status"] == "succeeded"


def test_a_dask_worker_that_dies_mid_record_fails_only_that_record_and_the_run_goes_on(
    run_choreo: RunChoreo, pipeline: Path, tmp_path: Path
) -> None:
    pytest.importorskip("distributed")
    write_input(tmp_path / "in.jsonl", 600, die=152)
    write_input(tmp_path / "clean.jsonl", 600)
    temp = tmp_path / "temp"  # the workers' progress folders go here (TMPDIR)
    temp.mkdir()
    run = run_choreo(
        ["run", pipeline, "-i", "in.jsonl", "--executor", "dask", "-w", "2"],
        env={"TMPDIR": str(temp)},
        timeout=120,
    )
    assert run.code == 1
    # The restarted worker's, the dead one's and the other worker's files are all swept.
    assert list(temp.glob("choreo-dask-*")) == []
    assert run.indices == list(range(601))
    died = [line for line in run.lines if (line["error"] or {}).get("type") == "WorkerDied"]
    # Line 154: id 152, after the line that is not JSON. Dask ran its batch again on the
    # other worker, which took back the results of the records the dead one had run.
    assert [line["line"] for line in died] == [154]
    assert died[0]["error"]["message"].startswith("Dask worker tcp://127.0.0.1:")
    assert died[0]["error"]["message"].endswith("died while running this record")
    # Every other record has its one line, as without the killer.
    clean = run_choreo(["run", pipeline, "-i", "clean.jsonl", "--executor", "thread"])
    assert [line for line in run.lines if line["line"] != 154] == [
        line for line in clean.lines if line["line"] != 154
    ]
    assert "records: 601" in run.stderr


def test_a_dying_dask_worker_fails_only_its_record_also_with_data_input_and_rejects(
    run_choreo: RunChoreo, pipeline: Path, tmp_path: Path
) -> None:
    """With --include-data or --include-input every record's bag travels: the dead worker
    journalled each one's before the next started, so only the killer fails. Before, the
    records it had run since its last flush failed too (shown as not run, sent to the
    rejects, so a replay ran them twice)."""
    pytest.importorskip("distributed")
    write_input(tmp_path / "in.jsonl", 600, die=152)
    write_input(tmp_path / "clean.jsonl", 600)
    args = ["run", pipeline, "--include-data", "--include-input", "-q"]
    run = run_choreo(
        [*args, "-i", "in.jsonl", "--rejects", "dask.rejects", "--executor", "dask", "-w", "2"],
        timeout=120,
    )
    thread = run_choreo([*args, "-i", "clean.jsonl", "--rejects", "thread.rejects"])
    assert run.code == 1
    died = [line for line in run.lines if (line["error"] or {}).get("type") == "WorkerDied"]
    assert [line["line"] for line in died] == [154]  # id 152, after the line that is not JSON
    assert died[0]["error"]["message"].endswith("died while running this record")
    assert [line for line in run.lines if line["line"] != 154] == [
        line for line in thread.lines if line["line"] != 154
    ]
    # The rejects are the thread run's and the killer: none ran and is run again on a replay.
    rejects = (tmp_path / "dask.rejects").read_bytes().splitlines()
    killer = [line for line in rejects if b'"die": true' in line]
    assert len(killer) == 1
    assert [line for line in rejects if line not in killer] == (
        (tmp_path / "thread.rejects").read_bytes().splitlines()
    )


FAIL_FAST = """\
version: 1
steps:
  - name: one
    job: steps:job
"""

FAIL_FAST_STEPS = """\
import time


def job(ctx, record):
    with open("started.log", "a") as log:
        log.write(f"start {record['id']} {time.monotonic()}\\n")
    if record.get("fail"):
        with open("started.log", "a") as log:
            log.write(f"failed {record['id']} {time.monotonic()}\\n")
        raise RuntimeError("the first failure")
    time.sleep(record["nap"])
"""


@pytest.mark.parametrize(
    ("executor", "workers", "nap", "bound"),
    [
        # One worker starts no record after its own failure: not even its batch's next one.
        ("process", 1, 0.02, 0),
        # The workers share one stop flag, read before each record: the one that failed
        # raises it at once. Each other worker may have read it just before it rose.
        ("process", 4, 0.02, 3),
        # The failed record's batch comes back at once (its worker stops itself), and
        # choreo then tells the other worker, between two of its records: it may start
        # one more while that message travels (records of 0.1 s; a second one on a
        # loaded machine).
        ("dask", 2, 0.1, 2),
    ],
)
def test_fail_fast_starts_no_record_once_a_failure_is_known(
    run_choreo: RunChoreo,
    write_pipeline: WritePipeline,
    tmp_path: Path,
    executor: str,
    workers: int,
    nap: float,
    bound: int,
) -> None:
    """Record 3 of 100 fails. Before, the workers ran on until their batches ended: 13
    (process -w 1), 60 (-w 4) and 46 (dask -w 2) later records ran their jobs."""
    if executor == "dask":
        pytest.importorskip("distributed")
    pipeline = write_pipeline(FAIL_FAST, FAIL_FAST_STEPS)
    records = [{"id": i, "nap": nap, **({"fail": True} if i == 3 else {})} for i in range(100)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = run_choreo(
        [
            "run",
            pipeline,
            "-i",
            "in.jsonl",
            "--fail-fast",
            "--executor",
            executor,
            "-w",
            str(workers),
        ],
        timeout=120,
    )
    assert run.code == 3, run.stderr  # halted early, not an interruption (130)
    assert "halted: --fail-fast: the record at line 4 failed (RuntimeError)\n" in run.stderr
    events = [line.split() for line in (tmp_path / "started.log").read_text().splitlines()]
    (failed_at,) = [float(at) for kind, _, at in events if kind == "failed"]
    started = {int(record): float(at) for kind, record, at in events if kind == "start"}
    late = sorted(record for record, at in started.items() if at > failed_at)
    assert len(late) <= bound, f"{late} started after the failure"
    # One line per record read; those that started are reported as they ran (records in
    # flight finish), the others are cancelled as by an interruption.
    assert run.indices == list(range(len(run.lines)))
    for line in run.lines:
        if line["index"] in started:
            assert line["status"] == ("failed" if line["index"] == 3 else "succeeded")
        else:
            assert line["status"] == "cancelled"
            assert line["error"]["type"] == "Interrupted"


KEYBOARD = """\
def job(ctx, record):
    if record == 5:
        raise KeyboardInterrupt
"""


@pytest.mark.parametrize("executor", ["process", "dask"])
def test_a_step_raising_keyboard_interrupt_exits_130(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path, executor: str
) -> None:
    """As with threads: the worker tells choreo, which interrupts the run (was exit 1)."""
    if executor == "dask":
        pytest.importorskip("distributed")
    pipeline = write_pipeline(FAIL_FAST, KEYBOARD)
    (tmp_path / "in.jsonl").write_text("".join(f"{i}\n" for i in range(2000)))
    run = run_choreo(
        ["run", pipeline, "-i", "in.jsonl", "--executor", executor, "-w", "2"], timeout=120
    )
    assert run.code == 130, run.stderr
    assert run.indices == list(range(len(run.lines)))
    assert run.lines[5]["status"] == "cancelled"
    assert run.lines[5]["error"] == {
        "step": "one",
        "phase": None,
        "type": "Interrupted",
        "message": "interrupted during step 'one'",
    }
    assert {line["status"] for line in run.lines} == {"succeeded", "cancelled"}


def test_sigterm_stops_a_process_run_with_no_hole_in_the_output(
    start_choreo: StartChoreo, pipeline: Path, tmp_path: Path, parse_results: ParseResults
) -> None:
    write_input(tmp_path / "in.jsonl", 3000, nap=0.005)
    process = start_choreo(["run", pipeline, "-i", "in.jsonl", "--executor", "process", "-w", "2"])
    assert process.stdout is not None
    first = b""
    while b"\n" not in first:  # the workers are up and records are flowing
        chunk = os.read(process.stdout.fileno(), 65536)
        assert chunk, "choreo ended before writing a result"
        first += chunk
    process.send_signal(signal.SIGTERM)
    rest, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    lines = parse_results(first + rest)
    assert [line["index"] for line in lines] == list(range(len(lines)))
    # The run stopped early, and every record it had read got its line: finished, or
    # cancelled by the signal (whether any was still in flight then depends on timing).
    assert len(lines) < 3000
    interrupted = [line for line in lines if (line["error"] or {}).get("type") == "Interrupted"]
    assert all(line["status"] == "cancelled" for line in interrupted)
    assert all(line["index"] > 0 for line in interrupted)
    assert len(list(tmp_path.glob("torn-down-*"))) == 2  # teardown ran in both workers


HANGING = """\
version: 1
steps:
  - name: hang
    job: steps:hang
"""

HANGING_STEPS = """\
import os
import time


def hang(ctx, record):
    stuck()


def stuck():
    with open(f"running-{os.getpid()}", "w"):
        pass
    time.sleep(3600)
"""

# The same, while a resource of the worker is being built.
HANGING_RESOURCE = """\
version: 1
resources:
  stuck:
    factory: steps:stuck
    scope: worker
steps:
  - name: hang
    job: steps:hang
"""


def _started_workers(tmp_path: Path, count: int) -> list[int]:
    """The pids of the worker processes that started a (hanging) record, once ``count`` did."""
    deadline = time.monotonic() + 60
    while len(found := list(tmp_path.glob("running-*"))) < count:
        assert time.monotonic() < deadline, "the workers did not start their records"
        time.sleep(0.05)
    return [int(path.name.split("-")[1]) for path in found]


def _ended(pid: int, within: float) -> bool:
    """True once process ``pid`` is gone (or a zombie) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("executor", ["process", "dask"])
def test_a_second_signal_takes_the_worker_processes_down_too(
    start_choreo: StartChoreo, write_pipeline: WritePipeline, tmp_path: Path, executor: str
) -> None:
    """Workers ignore SIGINT (choreo coordinates them): a step that never returns kept its
    worker alive after choreo exited."""
    pipeline = write_pipeline(HANGING, HANGING_STEPS)
    (tmp_path / "in.jsonl").write_text("1\n2\n3\n")
    process = start_choreo(["run", pipeline, "-i", "in.jsonl", "--executor", executor, "-w", "2"])
    workers = _started_workers(tmp_path, 2)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the first signal waits for records in flight: these never end
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert all(_ended(pid, 5) for pid in workers)
    # Nothing but the first signal's line, not even multiprocessing's resource tracker
    # (left behind, it warned of "leaked semaphore objects" for Dask's nannies).
    assert stderr == (
        b"interrupted (SIGINT): no new record starts; records in flight stop before their "
        b"next step (a second signal ends choreo at once)\n"
    )


@pytest.mark.parametrize("holding", [HANGING, HANGING_RESOURCE], ids=["step", "resource"])
def test_a_worker_whose_parent_was_killed_ends_even_if_a_step_holds_on(
    start_choreo: StartChoreo, write_pipeline: WritePipeline, tmp_path: Path, holding: str
) -> None:
    pipeline = write_pipeline(holding, HANGING_STEPS)
    (tmp_path / "in.jsonl").write_text("1\n2\n3\n")
    process = start_choreo(["run", pipeline, "-i", "in.jsonl", "--executor", "process", "-w", "2"])
    workers = _started_workers(tmp_path, 2)
    process.kill()
    process.communicate(timeout=30)
    # ORPHAN_SECONDS (5 s) for the record and teardown, then the worker ends itself.
    assert all(_ended(pid, 15) for pid in workers)


def test_a_teardown_that_fails_in_a_worker_exits_1(
    run_choreo: RunChoreo, pipeline: Path, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": 1}\n{"id": 2}\n', encoding="utf-8")
    run = run_choreo(
        ["run", pipeline, "-i", "in.jsonl", "--executor", "process", "-w", "1", "-q"],
        env={"CHOREO_T_TEARDOWN": "fail"},
    )
    assert run.code == 1
    assert run.statuses == ["succeeded", "succeeded"]
    assert "teardown raised OSError: disk gone (results may not be durable)" in run.stderr


def test_scheduler_without_the_dask_executor_is_a_usage_error(
    run_choreo: RunChoreo, pipeline: Path
) -> None:
    run = run_choreo(["run", pipeline, "--scheduler", "tcp://127.0.0.1:8786"], input=b"1\n")
    assert run.code == 2
    assert run.stderr == "error: --scheduler needs --executor dask\n"
    assert run.lines == []


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("nonsense", "missing port number in address 'nonsense'"),
        ("tcp://10.0.0.5", "missing port number in address '10.0.0.5'"),
        ("tcp://:8786", "no host in the address"),
        ("tcp://10.0.0.5:87x", "invalid literal for int() with base 10: '87x'"),
    ],
)
def test_a_scheduler_address_that_does_not_parse_exits_2_at_once(
    run_choreo: RunChoreo, pipeline: Path, address: str, why: str
) -> None:
    """No Client is made for it (one that cannot parse its address hangs 20 s on exit,
    then prints a traceback)."""
    run = run_choreo(
        ["run", pipeline, "--executor", "dask", "--scheduler", address],
        input=b"1\n",
        timeout=15,
    )
    assert run.code == 2
    assert run.stderr == (
        f"error: {address!r} is not a Dask scheduler address ({why}): "
        "give one like tcp://10.0.0.5:8786\n"
    )
    assert run.lines == []


def test_the_dask_executor_without_dask_says_how_to_install_it(
    run_choreo: RunChoreo, pipeline: Path, tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow" / "distributed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named distributed')\n")
    run = run_choreo(
        ["run", pipeline, "--executor", "dask"],
        input=b"1\n",
        env={"PYTHONPATH": str(shadow.parent)},
    )
    assert run.code == 2
    # The python that runs choreo (the command's own interpreter, .venv/bin/python3 here).
    prefix = "error: the dask executor needs dask.distributed, which is not installed in "
    prefix += "choreo's environment: "
    assert run.stderr.startswith(prefix)
    python, rest = run.stderr[len(prefix) :].split(" ", 1)
    assert Path(python).resolve() == Path(sys.executable).resolve()
    assert rest == "-m pip install 'dask[distributed]>=2024.1'\n"


def test_a_resumed_process_run_keeps_the_records_numbers(
    run_choreo: RunChoreo, pipeline: Path, tmp_path: Path
) -> None:
    write_input(tmp_path / "in.jsonl", 60)  # 61 lines: one is not JSON
    run_choreo(["run", pipeline, "-i", "in.jsonl", "--checkpoint", "run.ckpt"])
    with open(tmp_path / "in.jsonl", "a", encoding="utf-8") as grown:
        grown.write("".join(json.dumps({"id": i}) + "\n" for i in range(60, 90)))
    # The numbers a whole run gives each line, for comparison.
    whole = run_choreo(["run", pipeline, "-i", "in.jsonl"])
    expected = {line["line"]: line["index"] for line in whole.lines}
    resume = ["run", pipeline, "-i", "in.jsonl", "--checkpoint", "run.ckpt"]
    resumed = run_choreo([*resume, "--executor", "process", "-w", "2"])
    assert [line["line"] for line in resumed.lines] == list(range(62, 92))
    assert [line["index"] for line in resumed.lines] == [expected[n] for n in range(62, 92)]
