"""The generated runners: their source pinned per plan shape, and inspectable when they run.

Each shape's expected source is a file in ``tests/unit/generated/``. After a deliberate
change to the code generation, rewrite them and review the diff::

    CHOREO_UPDATE_SNAPSHOTS=1 pytest tests/unit/test_generated.py

(``-k line_runner`` rewrites only the fused line runner's files.)
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import inspect
import linecache
import os
import re
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from choreo_cli import ConcurrencyLimit, Coordinator, RateLimit, RetryPolicy, Skip, Step
from choreo_cli.core.compiled import Generated, async_source, define, record_source
from choreo_cli.core.outcomes import Outcomes
from choreo_cli.core.plan import Plan
from choreo_cli.core.result import Result
from choreo_cli.jsonl.line_runner import line_source, run_lines

SNAPSHOTS = Path(__file__).parent / "generated"
UPDATE_VARIABLE = "CHOREO_UPDATE_SNAPSHOTS"
GENERATED_FILE = re.compile(r"<choreo generated ([a-z_/]+) for steps \[(.*)\] #(\d+)>")


@pytest.fixture(autouse=True)
def compiled_runners(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the generated code: never the reference runner."""
    monkeypatch.delenv("CHOREO_RUNNER", raising=False)


def check_snapshot(path: Path, source: str, *, update: bool) -> None:
    """Fail unless ``source`` is the text of ``path``; with ``update``, write it instead."""
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
        return
    how = f"if the change is intended, run with {UPDATE_VARIABLE}=1 and review the diff"
    if not path.exists():
        pytest.fail(f"no snapshot {path.name} of this generated source: {how}", pytrace=False)
    expected = path.read_text(encoding="utf-8")
    if source != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                source.splitlines(keepends=True),
                f"{path.name} (expected)",
                f"{path.name} (generated now)",
            )
        )
        pytest.fail(f"the generated source differs from {path.name}: {how}\n{diff}", pytrace=False)


def assert_snapshot(name: str, source: str) -> None:
    check_snapshot(
        SNAPSHOTS / f"{name}.py.txt", source, update=os.environ.get(UPDATE_VARIABLE) == "1"
    )


# -- the plan shapes ----------------------------------------------------------------------


def check(ctx: Any, record: Any) -> Any:
    if record == "skip":
        raise Skip("exists")
    return None


def fetch(ctx: Any, record: Any) -> Any:
    return record


def store(ctx: Any) -> Any:
    return ctx.index


def typed(ctx: Any, record: dict[str, Any]) -> Any:
    return record


@dataclasses.dataclass
class User:
    id: int


def typed_user(ctx: Any, record: User) -> Any:
    return record.id


async def fetch_async(ctx: Any, record: Any) -> Any:
    return record


async def check_async(ctx: Any, record: Any) -> Any:
    return None


def plan_of(*steps: Step, dry_run: bool = False, timings: bool = False) -> Plan:
    coordinator = Coordinator(dry_run=dry_run, timings=timings)
    for step in steps:
        coordinator.add_step(step)
    return coordinator.plan


SHAPES: dict[str, Callable[[], Generated]] = {
    "job_only": lambda: record_source(plan_of(Step(name="fetch", job=fetch))),
    "job_without_record": lambda: record_source(plan_of(Step(name="store", job=store))),
    "precheck_and_job": lambda: record_source(
        plan_of(Step(name="fetch", precheck=check, job=fetch), Step(name="store", job=store))
    ),
    "retry": lambda: record_source(
        plan_of(Step(name="fetch", precheck=check, job=fetch, retry=RetryPolicy(attempts=2)))
    ),
    "timeout": lambda: record_source(
        plan_of(Step(name="fetch", precheck=check, job=fetch, timeout=2.5))
    ),
    "timeout_retry": lambda: record_source(
        plan_of(
            Step(
                name="fetch",
                precheck=check,
                job=fetch,
                timeout=2.5,
                retry=RetryPolicy(attempts=2),
            ),
            timings=True,
        )
    ),
    "async": lambda: async_source(
        plan_of(
            Step(name="fetch", precheck=check_async, job=fetch_async),
            Step(name="store", precheck=check, job=store),
            Step(name="slow", job=fetch_async, timeout=2.5),
        )
    ),
    "async_record": lambda: record_source(
        plan_of(Step(name="fetch", precheck=check_async, job=fetch_async))
    ),
    "adapter_isinstance": lambda: record_source(plan_of(Step(name="typed", job=typed))),
    "adapter_general": lambda: record_source(plan_of(Step(name="typed", job=typed_user))),
    "dry_run": lambda: record_source(
        plan_of(
            Step(name="fetch", precheck=check, job=fetch),
            Step(name="store", job=store),
            dry_run=True,
        )
    ),
    "timings": lambda: record_source(plan_of(Step(name="fetch", job=fetch), timings=True)),
    # Limits: one limit inline (a rate limit leaves nothing; a concurrency limit leaves its
    # slot), two through the gate, a converted record on the general path.
    "limits": lambda: record_source(
        plan_of(
            Step(
                name="fetch",
                precheck=check,
                job=fetch,
                precheck_limits=[RateLimit("api", rate=50)],
                job_limits=[ConcurrencyLimit("db", concurrency=4)],
            ),
            Step(
                name="store",
                job=store,
                job_limits=[RateLimit("api", rate=50), ConcurrencyLimit("db", concurrency=4)],
            ),
            Step(name="typed", job=typed_user, job_limits=[RateLimit("api", rate=50)]),
        )
    ),
}


def line_plan() -> Plan:
    return plan_of(Step(name="fetch", precheck=check, job=fetch), Step(name="store", job=store))


# The fused loop of `choreo run` has files of its own: they can be regenerated alone.
LINE_SHAPES: dict[str, Callable[[], Generated]] = {
    "line_runner": lambda: line_source(line_plan(), keep_raw=False),
    "line_runner_keep_raw": lambda: line_source(line_plan(), keep_raw=True),
    # With a timeout: the loop that carried_lines runs on its carrier and starts again
    # after a stuck record (from a line and record number, no run of its own).
    "line_runner_resumable": lambda: line_source(
        plan_of(Step(name="fetch", precheck=check, job=fetch, timeout=2.5)),
        keep_raw=False,
        resumable=True,
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_generated_source_of_each_plan_shape(shape: str) -> None:
    assert_snapshot(shape, SHAPES[shape]().source)


@pytest.mark.parametrize("shape", sorted(LINE_SHAPES))
def test_generated_source_of_the_line_runner(shape: str) -> None:
    assert_snapshot(shape, LINE_SHAPES[shape]().source)


def test_every_snapshot_file_belongs_to_a_shape() -> None:
    stored = {path.name.removesuffix(".py.txt") for path in SNAPSHOTS.glob("*.py.txt")}
    assert stored == set(SHAPES) | set(LINE_SHAPES)


def test_the_shapes_take_the_paths_they_are_named_for() -> None:
    """Each snapshot shows what its shape is for (else the shape tests nothing new)."""

    def text(name: str) -> str:
        return (SNAPSHOTS / f"{name}.py.txt").read_text(encoding="utf-8")

    assert "v = job_0(ctx, value)" in text("job_only")
    assert "v = job_0(ctx)" in text("job_without_record")
    assert "except Skip as exc:" in text("precheck_and_job")
    assert "v = invoke(step_0.job, ctx, value, worker)" in text("retry")
    assert "if errors is None and ctx._attempts is None:" in text("retry")
    assert "ctx.timed_out = False" in text("timeout")
    # A timed call runs inline between the lines that set and clear the deadline slot.
    assert "invoke(" not in text("timeout")
    assert (
        "            deadline.call = pre_0_timed\n"
        "            try:\n"
        "                v = pre_0(ctx, value)\n"
        "            finally:\n"
        "                deadline.call = None\n"
        "                if deadline.lost:\n"
        "                    lost(deadline)\n"
    ) in text("timeout")
    # A retried job takes the general path, which sets the slot per attempt; what the
    # watchdog's snapshot needs that ctx does not hold is kept in the slot.
    assert "deadline.call = pre_0_timed" in text("timeout_retry")
    assert "v = invoke(step_0.job, ctx, value, worker)" in text("timeout_retry")
    assert "started = deadline.started = perf_counter()" in text("timeout_retry")
    assert "deadline.errors = (deadline.unit, index, errors, skipped)" in text("timeout_retry")
    # A timeout renews the worker's Context: a record that fails ends on the new one.
    assert "except BaseException as exc:\n                ctx = worker.ctx\n" in text("timeout")
    # Every shape runs most records untimed, and times the calls of the others.
    assert "    if worker.countdown:\n        worker.countdown -= 1\n" in text("job_only")
    assert "weight = begin_timed(worker)" in text("job_only")
    assert (
        "        call_started = perf_counter()\n"
        "        try:\n"
        "            v = job_0(ctx, value)\n"
        "        except BaseException as exc:\n"
        "            note_time(worker, time_key_0_job, perf_counter() - call_started, weight)\n"
    ) in text("job_only")
    assert "v = await awaited(pre_0(ctx, value), worker)" in text("async")
    assert "leave_loop(None)" in text("async")
    assert "await ainvoke(step_2.job, ctx, value, worker)" in text("async")
    assert "v = invoke(step_0.pre, ctx, value, worker)" in text("async_record")
    assert "isinstance(value, job_0_type)" in text("adapter_isinstance")
    assert "ctx._conv = None" in text("adapter_general")
    assert "v = invoke(step_0.job, ctx, value, worker)" in text("adapter_general")
    assert "job_" not in text("dry_run") and "pre_0(ctx, value)" in text("dry_run")
    assert "started = perf_counter()" in text("timings")
    assert "result.duration = perf_counter() - started" in text("timings")
    assert "started = None" in text("job_only")
    assert "raw = None" in text("line_runner")
    assert "raw = data + NEWLINE" in text("line_runner_keep_raw")
    resumable = text("line_runner_resumable")
    assert resumable.startswith(
        "def run_lines(batches, worker, clean_line, put, emit, tally, number, index):\n"
        "    for lines in batches:\n"
    )
    assert "flags.begin()" not in resumable and "deadline.call = job_0_timed" in resumable


def test_a_changed_source_fails_with_a_diff_and_says_how_to_update(tmp_path: Path) -> None:
    path = tmp_path / "shape.py.txt"
    path.write_text("def run():\n    return 1\n", encoding="utf-8")
    check_snapshot(path, "def run():\n    return 1\n", update=False)
    with pytest.raises(pytest.fail.Exception) as failed:
        check_snapshot(path, "def run():\n    return 2\n", update=False)
    message = str(failed.value)
    assert "-    return 1\n+    return 2" in message
    assert "CHOREO_UPDATE_SNAPSHOTS=1" in message
    with pytest.raises(pytest.fail.Exception, match=r"no snapshot other\.py\.txt"):
        check_snapshot(tmp_path / "other.py.txt", "", update=False)
    check_snapshot(path, "def run():\n    return 2\n", update=True)
    assert path.read_text(encoding="utf-8") == "def run():\n    return 2\n"


def global_loads(code: types.CodeType) -> Iterator[str]:
    """The global names ``code`` and the functions it defines read."""
    import dis

    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            yield str(instruction.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from global_loads(const)


@pytest.mark.parametrize("shape", sorted(SHAPES) + sorted(LINE_SHAPES))
def test_every_name_the_generated_code_reads_is_in_its_namespace(shape: str) -> None:
    """Also on the rare paths no record of a test may take."""
    generated = {**SHAPES, **LINE_SHAPES}[shape]()
    code = compile(generated.source, "<test>", "exec")
    defined = set(generated.functions)
    builtins = set(dir(__builtins__)) if isinstance(__builtins__, types.ModuleType) else set()
    builtins |= set(__builtins__) if isinstance(__builtins__, dict) else set()
    missing = set(global_loads(code)) - set(generated.namespace) - defined - builtins
    assert not missing


# -- inspectable when it runs -------------------------------------------------------------


class Broken(RuntimeError):
    pass


def fails(ctx: Any, record: Any) -> Any:
    raise ValueError("the job failed")


def broken_outcome(*args: Any) -> Any:
    raise Broken("a rare path broke")


def generated_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    return [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename.startswith("<choreo generated ")
    ]


def filename_of(function: Any) -> str:
    """The file name of a function's code (a generated one's linecache entry)."""
    return str(function.__code__.co_filename)


def ignore(line: bytes) -> None:
    pass


def finish(coroutine: Any) -> Any:
    """Run a coroutine that never awaits (no async callable): what it returns."""
    with pytest.raises(StopIteration) as stopped:
        coroutine.send(None)
    return stopped.value.value


def through_run(coordinator: Coordinator) -> Any:
    return coordinator.run(1)


def through_run_serial(coordinator: Coordinator) -> Any:
    return list(coordinator.run_many([1]))


def through_run_async(coordinator: Coordinator) -> Any:
    # No await in this plan: the coroutine ends in its first step.
    coroutine: Any = coordinator.run_item_async(1, 0, coordinator.local_worker())
    coroutine.send(None)


def through_run_lines(coordinator: Coordinator) -> Any:
    return list(run_lines(coordinator, [[b"1"]], clean_line=b"%d %d", put=ignore, emit=print))


@pytest.mark.parametrize(
    ("entry", "function", "line"),
    [
        (through_run, "run", "return on_job_error(exc, 0, ctx, raw, started, errors, skipped)"),
        (
            through_run_serial,
            "run_serial",
            "yield on_job_error(exc, 0, ctx, raw, started, errors, skipped)",
        ),
        (
            through_run_async,
            "run_async",
            "return on_job_error(exc, 0, ctx, raw, started, errors, skipped)",
        ),
        (
            through_run_lines,
            "run_lines",
            "result = on_job_error(exc, 0, ctx, raw, started, errors, skipped)",
        ),
    ],
)
def test_a_traceback_through_a_generated_runner_shows_the_generated_line(
    monkeypatch: pytest.MonkeyPatch,
    entry: Callable[[Coordinator], Any],
    function: str,
    line: str,
) -> None:
    # An error inside choreo's own rare path escapes the runner (a job's error would not).
    monkeypatch.setattr(Outcomes, "on_job_error", broken_outcome)
    coordinator = Coordinator()
    coordinator.add_step(Step(name="fails", job=fails))
    with pytest.raises(Broken) as raised:
        entry(coordinator)
    frames = generated_frames(raised.value)
    assert [frame.name for frame in frames] == [function]
    (frame,) = frames
    match = GENERATED_FILE.fullmatch(frame.filename)
    assert match is not None and function in match.group(1).split("/")
    assert match.group(2) == "'fails'"
    assert frame.line == line
    text = "".join(traceback.format_exception(raised.value))
    assert f'File "{frame.filename}", line {frame.lineno}, in {function}\n    {line}\n' in text


def test_inspect_getsource_shows_each_generated_function() -> None:
    coordinator = Coordinator()
    coordinator.add_step(Step(name="fetch", precheck=check, job=fetch))
    coordinator.run(1)
    runner, serial = coordinator._runner, coordinator._serial
    assert runner is not None and serial is not None
    source = record_source(coordinator.plan).source
    single, rest = source.split("\n\n\n")
    assert inspect.getsource(runner) == single + "\n"
    assert inspect.getsource(serial) == rest
    run_async = coordinator._compile_async()
    assert inspect.getsource(run_async) == async_source(coordinator.plan).source
    list(run_lines(coordinator, [], clean_line=b"%d %d", put=ignore, emit=print))
    lines: Any = coordinator.compiled(("run_lines", False), lambda plan: None)
    assert inspect.getsource(lines) == line_source(coordinator.plan, keep_raw=False).source


def test_the_generated_file_names_say_what_and_for_which_steps() -> None:
    coordinator = Coordinator()
    for name in ("a", "b", "c", "d"):
        coordinator.add_step(Step(name=name, job=fetch))
    coordinator.run(1)
    again = Coordinator()
    for name in ("a", "b", "c", "d"):
        again.add_step(Step(name=name, job=fetch))
    again.run(1)
    first = filename_of(coordinator._runner)
    second = filename_of(again._runner)
    for filename in (first, second):
        match = GENERATED_FILE.fullmatch(filename)
        assert match is not None
        assert match.group(1, 2) == ("run/run_serial", "'a', 'b', 'c', ...")
    assert first != second  # same steps, each its own entry
    assert linecache.getline(first, 1) == "def run(value, index, line, raw, worker):\n"


def test_the_generated_source_leaves_linecache_with_its_coordinator() -> None:
    coordinator = Coordinator()
    coordinator.add_step(Step(name="fetch", precheck=check, job=fetch))
    assert coordinator.run(1).clean
    assert [r.clean for r in coordinator.run_many([1])] == [True]
    assert finish(coordinator.run_item_async(1, 0, coordinator.local_worker())).clean
    assert list(run_lines(coordinator, [[b"1"]], clean_line=b"%d %d", put=ignore, emit=print))
    functions = [
        coordinator._runner,
        coordinator._serial,
        coordinator._async_runner,
        coordinator.compiled(("run_lines", False), lambda plan: None),
    ]
    filenames = {filename_of(f) for f in functions}
    assert len(filenames) == 3  # run and run_serial share one source
    assert all(name in linecache.cache for name in filenames)
    del coordinator, functions
    gc.collect()
    assert not filenames & set(linecache.cache)


def test_a_new_step_drops_the_source_of_the_runners_before_it() -> None:
    coordinator = Coordinator()
    coordinator.add_step(Step(name="fetch", job=fetch))
    coordinator.run(1)
    filename = filename_of(coordinator._runner)
    coordinator.add_step(Step(name="store", job=store))
    gc.collect()
    assert filename not in linecache.cache
    coordinator.run(1)
    assert filename_of(coordinator._runner) in linecache.cache


def plan_state(plan: Plan) -> dict[str, Any]:
    return {slot: getattr(plan, slot) for slot in Plan.__slots__}


@pytest.mark.parametrize(
    "build",
    [
        record_source,
        async_source,
        lambda plan: line_source(plan, keep_raw=False),
        lambda plan: line_source(plan, keep_raw=True),
        lambda plan: line_source(plan, keep_raw=False, resumable=True),
    ],
)
def test_the_builders_have_no_side_effects(build: Callable[[Plan], Generated]) -> None:
    plan = plan_of(
        Step(name="fetch", precheck=check, job=fetch, retry=RetryPolicy(attempts=2)),
        Step(name="typed", job=typed, timeout=3),
        Step(name="slow", job=fetch_async),
    )
    state = plan_state(plan)
    gc.collect()  # runners of earlier tests that die now drop their sources
    cached = set(linecache.cache)
    first = build(plan)
    second = build(plan)
    assert first.source == second.source
    assert first.functions == second.functions
    assert set(first.namespace) == set(second.namespace)
    # Nothing registered (an earlier test's runner collected meanwhile may leave it).
    assert not set(linecache.cache) - cached
    after = plan_state(plan)
    assert after.keys() == state.keys()
    assert all(after[slot] is state[slot] for slot in state)
    namespace = dict(first.namespace)
    functions = define(first, plan)
    assert first.namespace == namespace  # define runs the source in a copy
    assert [f.__name__ for f in functions] == list(first.functions)


def test_a_generated_runner_gives_the_results_of_its_snapshot_shape() -> None:
    """The snapshots are of code that runs: the shape with a precheck, through it."""
    coordinator = Coordinator(timings=False)
    coordinator.add_step(Step(name="fetch", precheck=check, job=fetch))
    coordinator.add_step(Step(name="store", job=store))
    snapshot = (SNAPSHOTS / "precheck_and_job.py.txt").read_text(encoding="utf-8")
    assert snapshot.startswith(inspect.getsource(coordinator._compile()[0]) + "\n\n")
    results: list[Result] = list(coordinator.run_many(["skip", 2]))
    assert [r.steps for r in results] == [
        {"fetch": "skipped", "store": "succeeded"},
        {"fetch": "succeeded", "store": "succeeded"},
    ]
    assert results[1].bag.as_dict() == {"precheck": {}, "job": {"fetch": 2, "store": 1}}
