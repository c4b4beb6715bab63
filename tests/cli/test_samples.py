"""The sample pipelines validate, and run end to end with the real `choreo` command."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_pipelines"
STATEMENTS = SAMPLES / "statements"
HELLO = SAMPLES / "hello"
CHOREO = Path(sys.executable).parent / "choreo"

# What make_records.py writes into statements/records.jsonl; test_records_file_counts
# derives each figure from the file again.
TOTAL_LINES = 1003
BLANK_LINES = 1
INVALID_JSON = 3
FAILING = 3  # amount is a string: the "create statement line" job raises ValueError
STATEMENT_COUNT = 100
DISTINCT_LINES = 956
DUPLICATES = 40  # repeats of an earlier line: both prechecks skip
SUCCEEDED = DISTINCT_LINES + DUPLICATES
RESULT_LINES = TOTAL_LINES - BLANK_LINES

BOTH_SKIPPED = {"create statement": "skipped", "create statement line": "skipped"}
LINE_FAILED = {"create statement": "skipped", "create statement line": "failed"}


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class RecordsFile:
    """statements/records.jsonl read independently of choreo: line numbers are 1-based."""

    blank: list[int] = field(default_factory=list)
    invalid: list[int] = field(default_factory=list)
    failing: list[int] = field(default_factory=list)
    loadable: dict[int, dict[str, Any]] = field(default_factory=dict)  # numeric amount

    @property
    def nonblank(self) -> list[int]:
        return sorted([*self.invalid, *self.failing, *self.loadable])

    @property
    def distinct_lines(self) -> set[tuple[str, int, float]]:
        return {(r["statement_id"], r["line_no"], r["amount"]) for r in self.loadable.values()}


def _read_records() -> RecordsFile:
    records = RecordsFile()
    text = (STATEMENTS / "records.jsonl").read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            records.blank.append(number)
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            records.invalid.append(number)
            continue
        amount = value["amount"]
        if isinstance(amount, (int, float)) and not isinstance(amount, bool):
            records.loadable[number] = value
        else:
            records.failing.append(number)
    return records


def _choreo(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHOREO), *args],
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}\nstdout:\n{proc.stdout[:2000]}"


def _errors(result: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(e["step"], e["phase"], e["type"], e["message"]) for e in result["errors"]]


# -- the records file -------------------------------------------------------------------


def test_records_file_is_what_make_records_writes() -> None:
    make_records = _load(STATEMENTS / "make_records.py", "choreo_sample_make_records")
    assert (STATEMENTS / "records.jsonl").read_bytes() == make_records.render().encode()


def test_records_file_counts() -> None:
    records = _read_records()
    keys = Counter((r["statement_id"], r["line_no"]) for r in records.loadable.values())
    assert len(records.nonblank) + len(records.blank) == TOTAL_LINES
    assert len(records.blank) == BLANK_LINES
    assert len(records.invalid) == INVALID_JSON
    assert len(records.failing) == FAILING
    assert len({r["statement_id"] for r in records.loadable.values()}) == STATEMENT_COUNT
    assert len(keys) == DISTINCT_LINES == len(records.distinct_lines)  # a repeat is identical
    assert sum(keys.values()) - len(keys) == DUPLICATES


# -- choreo validate ----------------------------------------------------------------------


@pytest.mark.parametrize("sample", ["hello", "statements"])
def test_sample_pipeline_validates(sample: str, tmp_path: Path) -> None:
    proc = _choreo("validate", str(SAMPLES / sample / "pipeline.yaml"), cwd=tmp_path)
    assert proc.returncode == 0, _explain(proc)


# -- hello ----------------------------------------------------------------------------------


def test_hello_greets_every_name(tmp_path: Path) -> None:
    proc = _choreo(
        "run",
        str(HELLO / "pipeline.yaml"),
        "-i",
        str(HELLO / "records.jsonl"),
        "--include-data",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, _explain(proc)
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, _explain(proc)
    for line, name in zip(lines, ["Ada", "Grace", "Linus"], strict=True):
        result = json.loads(line)
        assert result["status"] == "succeeded"
        assert result["steps"] == {"greet": "succeeded"}
        assert f"hello, {name}" in line  # only the data bag can carry the greeting


# -- statements, run twice on one database -----------------------------------------------


@dataclass(frozen=True)
class Run:
    proc: subprocess.CompletedProcess[str]
    results: list[dict[str, Any]]
    statements: list[tuple[Any, ...]]
    lines: list[tuple[Any, ...]]

    def with_status(self, status: str) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] == status]


def _run_statements(workdir: Path, db: Path) -> Run:
    proc = _choreo(
        "run",
        str(STATEMENTS / "pipeline.yaml"),
        "--input",
        str(STATEMENTS / "records.jsonl"),
        cwd=workdir,
        env={"STATEMENTS_DB": str(db)},
    )
    assert db.exists(), _explain(proc)
    with closing(sqlite3.connect(db)) as conn:
        statements = conn.execute("SELECT * FROM statements ORDER BY id").fetchall()
        lines = conn.execute("SELECT * FROM statement_lines ORDER BY id").fetchall()
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    return Run(proc, results, statements, lines)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    workdir = tmp_path_factory.mktemp("statements")
    db = workdir / "loaded.db"
    return _run_statements(workdir, db), _run_statements(workdir, db)


@pytest.fixture(scope="module")
def first(runs: tuple[Run, Run]) -> Run:
    return runs[0]


@pytest.fixture(scope="module")
def second(runs: tuple[Run, Run]) -> Run:
    return runs[1]


def test_first_run_exits_1_with_one_line_per_nonblank_input_line(first: Run) -> None:
    records = _read_records()
    assert first.proc.returncode == 1, _explain(first.proc)
    assert len(first.results) == RESULT_LINES
    assert [r["line"] for r in first.results] == records.nonblank
    assert [r["index"] for r in first.results] == list(range(RESULT_LINES))


def test_first_run_statuses(first: Run) -> None:
    assert Counter(r["status"] for r in first.results) == {
        "succeeded": SUCCEEDED,
        "failed": FAILING,
        "invalid": INVALID_JSON,
    }


def test_first_run_loads_every_statement_and_line_once(first: Run) -> None:
    records = _read_records()
    assert len(first.statements) == STATEMENT_COUNT
    assert {currency for _, _, currency in first.statements} == {"EUR"}
    assert len(first.lines) == DISTINCT_LINES
    statement_ids = {row_id: statement_id for row_id, statement_id, _ in first.statements}
    loaded = {(statement_ids[ref], no, amount) for _, ref, no, amount in first.lines}
    assert loaded == records.distinct_lines


def test_first_run_step_outcomes(first: Run) -> None:
    succeeded = first.with_status("succeeded")
    created = [r for r in succeeded if r["steps"]["create statement"] == "succeeded"]
    assert len(created) == STATEMENT_COUNT
    assert all(r["steps"]["create statement line"] == "succeeded" for r in created)
    new_lines = [r for r in succeeded if r["steps"]["create statement line"] == "succeeded"]
    assert len(new_lines) == DISTINCT_LINES
    repeats = [r for r in succeeded if r["steps"] == BOTH_SKIPPED]
    assert len(repeats) == DUPLICATES
    assert _errors(repeats[0]) == [
        ("create statement", "precheck", "Skip", "statement exists"),
        ("create statement line", "precheck", "Skip", "statement line exists"),
    ]
    assert all(r["error"] is None for r in succeeded)


def test_first_run_failures_and_invalid_lines(first: Run) -> None:
    records = _read_records()
    failed = first.with_status("failed")
    assert [r["line"] for r in failed] == records.failing
    for result in failed:
        assert result["steps"] == LINE_FAILED
        error = result["error"]
        assert (error["step"], error["phase"], error["type"]) == (
            "create statement line",
            "job",
            "ValueError",
        )
        assert error["message"].startswith("amount must be a number")

    invalid = first.with_status("invalid")
    assert [r["line"] for r in invalid] == records.invalid
    for result in invalid:
        assert (result["error"]["step"], result["error"]["phase"]) == (None, "input")
        assert set(result["steps"].values()) <= {"not_run"}


def test_second_run_inserts_nothing(first: Run, second: Run) -> None:
    assert second.proc.returncode == 1, _explain(second.proc)
    assert second.statements == first.statements
    assert second.lines == first.lines


def test_second_run_skips_everything_already_loaded(first: Run, second: Run) -> None:
    assert len(second.results) == RESULT_LINES
    assert Counter(r["status"] for r in second.results) == {
        "succeeded": SUCCEEDED,
        "failed": FAILING,
        "invalid": INVALID_JSON,
    }
    loaded_before = [r["line"] for r in first.with_status("succeeded")]
    assert [r["line"] for r in second.with_status("succeeded")] == loaded_before
    assert all(r["steps"] == BOTH_SKIPPED for r in second.with_status("succeeded"))
    # The bad records are bad again: their statement exists, their line still fails.
    assert all(r["steps"] == LINE_FAILED for r in second.with_status("failed"))


# -- statements/steps.py on its own, with a fake ctx ---------------------------------------


class FakeBag:
    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}
        self.prechecks: dict[str, Any] = {}

    def job(self, name: str, default: Any = None) -> Any:
        return self.jobs.get(name, default)

    def precheck(self, name: str, default: Any = None) -> Any:
        return self.prechecks.get(name, default)


@pytest.fixture
def steps() -> ModuleType:
    return _load(STATEMENTS / "steps.py", "choreo_sample_statements_steps")


@pytest.fixture
def db(steps: ModuleType, tmp_path: Path) -> Iterator[sqlite3.Connection]:
    factory = steps.connect(str(tmp_path / "unit.db"))
    conn = next(factory)
    yield conn
    with pytest.raises(StopIteration):
        next(factory)  # teardown: commit and close


def _ctx(db: sqlite3.Connection) -> Any:
    return SimpleNamespace(
        resources=SimpleNamespace(db=db),
        values={"currency": "CHF"},
        bag=FakeBag(),
        log=logging.getLogger("choreo.step.test"),
    )


def _count(db: sqlite3.Connection, table: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_steps_load_a_new_statement_then_skip_it(steps: ModuleType, db: sqlite3.Connection) -> None:
    from choreo_cli import Skip

    record = {"statement_id": "ST-1", "line_no": 1, "amount": 12.5}
    ctx = _ctx(db)
    assert steps.statement_exists(ctx, record) is None
    ctx.bag.jobs["create statement"] = steps.create_statement(ctx, record)
    assert steps.line_exists(ctx, record) is None
    steps.create_line(ctx, record)
    assert db.execute("SELECT statement_id, currency FROM statements").fetchall() == [
        ("ST-1", "CHF")
    ]

    ctx = _ctx(db)
    with pytest.raises(Skip, match="statement exists") as skipped:
        steps.statement_exists(ctx, record)
    assert skipped.value.data == db.execute("SELECT id FROM statements").fetchone()[0]
    with pytest.raises(Skip, match="statement line exists"):
        steps.line_exists(ctx, record)


def test_create_line_takes_the_statement_from_precheck_data(
    steps: ModuleType, db: sqlite3.Connection
) -> None:
    from choreo_cli import Skip

    ctx = _ctx(db)
    statement_ref = steps.create_statement(ctx, {"statement_id": "ST-2"})
    ctx = _ctx(db)
    record = {"statement_id": "ST-2", "line_no": 7, "amount": -3}
    with pytest.raises(Skip) as skipped:
        steps.statement_exists(ctx, record)
    ctx.bag.prechecks["create statement"] = skipped.value.data
    steps.create_line(ctx, record)
    assert db.execute("SELECT statement_ref, line_no, amount FROM statement_lines").fetchall() == [
        (statement_ref, 7, -3.0)
    ]


def test_create_line_rejects_a_string_amount_and_keeps_nothing(
    steps: ModuleType, db: sqlite3.Connection
) -> None:
    ctx = _ctx(db)
    record = {"statement_id": "ST-3", "line_no": 1, "amount": "twelve"}
    ctx.bag.jobs["create statement"] = steps.create_statement(ctx, record)
    with pytest.raises(ValueError, match="amount must be a number, got 'twelve'"):
        steps.create_line(ctx, record)
    assert (_count(db, "statements"), _count(db, "statement_lines")) == (0, 0)


def test_prechecks_cancel_a_record_they_cannot_check(
    steps: ModuleType, db: sqlite3.Connection
) -> None:
    from choreo_cli import Cancel

    with pytest.raises(Cancel, match="record has no line_no"):
        steps.line_exists(_ctx(db), {"statement_id": "ST-4"})
