"""Property tests: any table of step outcomes behaves like a small reference model of §2."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_cli import Cancel, Context, Coordinator, Result, Skip, Step

PrecheckAction = Literal[
    "absent", "returns", "returns None", "skip", "skip no data", "cancel", "other"
]
JobAction = Literal["value", "none", "cancel", "other"]

PRECHECKS: list[PrecheckAction] = [
    "absent",
    "returns",
    "returns None",
    "skip",
    "skip no data",
    "cancel",
    "other",
]
JOBS: list[JobAction] = ["value", "none", "cancel", "other"]


class Boom(Exception):
    """The "any other exception" of §2."""


@dataclasses.dataclass
class Expected:
    calls: list[tuple[str, str]]
    status: str
    errors: list[tuple[str, str, str]]
    error: tuple[str, str, str] | None
    steps: dict[str, str]
    bag: dict[str, dict[str, Any]]


def step_name(i: int) -> str:
    return f"Step {i}"  # mixed case: the bag is read case-insensitively below


def model(table: list[tuple[PrecheckAction, JobAction]], record: int) -> Expected:
    """§2 as plainly as possible."""
    calls: list[tuple[str, str]] = []
    errors: list[tuple[str, str, str]] = []
    steps = {step_name(i): "not_run" for i in range(len(table))}
    bag: dict[str, dict[str, Any]] = {"precheck": {}, "job": {}}
    status = "succeeded"
    for i, (pre, job) in enumerate(table):
        name = step_name(i)
        if pre != "absent":
            calls.append((name, "precheck"))
            if pre == "returns":
                bag["precheck"][name] = ("pre", i, record)
            elif pre in ("skip", "skip no data", "other"):
                kind = {"skip": "Skip", "skip no data": "Skip", "other": "Boom"}[pre]
                errors.append((name, "precheck", kind))
                if pre == "skip":
                    bag["precheck"][name] = ("skip", i, record)
                steps[name] = "skipped"
                continue
            elif pre == "cancel":
                errors.append((name, "precheck", "Cancel"))
                steps[name] = "cancelled"
                status = "cancelled"
                break
        calls.append((name, "job"))
        if job == "value":
            bag["job"][name] = ("job", i, record)
        elif job == "cancel":
            errors.append((name, "job", "Cancel"))
            steps[name] = "cancelled"
            status = "cancelled"
            break
        elif job == "other":
            errors.append((name, "job", "Boom"))
            steps[name] = "failed"
            status = "failed"
            break
        steps[name] = "succeeded"
    error = errors[-1] if status != "succeeded" else None
    return Expected(calls, status, errors, error, steps, bag)


def build(
    table: list[tuple[PrecheckAction, JobAction]], calls: list[tuple[str, str]]
) -> Coordinator:
    coordinator = Coordinator()
    for i, (pre, job) in enumerate(table):
        name = step_name(i)
        precheck = None if pre == "absent" else make_precheck(name, i, pre, calls)
        coordinator.add_step(Step(name=name, precheck=precheck, job=make_job(name, i, job, calls)))
    return coordinator


def make_precheck(
    name: str, i: int, action: PrecheckAction, calls: list[tuple[str, str]]
) -> Callable[..., Any]:
    def precheck(ctx: Context, record: int) -> Any:
        calls.append((name, "precheck"))
        # every earlier step's data is visible, case-insensitively
        assert ctx.step == name
        if action == "returns":
            return ("pre", i, record)
        if action == "skip":
            raise Skip("skip", data=("skip", i, record))
        if action == "skip no data":
            raise Skip("skip")
        if action == "cancel":
            raise Cancel("cancel")
        if action == "other":
            raise Boom("boom")
        return None

    return precheck


def make_job(
    name: str, i: int, action: JobAction, calls: list[tuple[str, str]]
) -> Callable[..., Any]:
    def job(ctx: Context, record: int) -> Any:
        calls.append((name, "job"))
        if action == "value":
            return ("job", i, record)
        if action == "cancel":
            raise Cancel("cancel")
        if action == "other":
            raise Boom("boom")
        return None

    return job


def observed(result: Result, calls: list[tuple[str, str]]) -> Expected:
    error = result.error
    return Expected(
        calls=list(calls),
        status=result.status,
        errors=[(e.step or "", e.phase or "", e.type) for e in result.errors],
        error=None if error is None else (error.step or "", error.phase or "", error.type),
        steps=dict(result.steps),
        bag=result.bag.as_dict(),
    )


tables = st.lists(
    st.tuples(st.sampled_from(PRECHECKS), st.sampled_from(JOBS)), min_size=1, max_size=6
)


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(tables, st.lists(st.integers(0, 9), min_size=1, max_size=3))
def test_any_table_of_outcomes_matches_the_model(
    table: list[tuple[PrecheckAction, JobAction]], records: list[int]
) -> None:
    calls: list[tuple[str, str]] = []
    coordinator = build(table, calls)
    # The same coordinator runs several records: each must start clean, whatever came before.
    for record in records:
        calls.clear()
        expected = model(table, record)
        result = coordinator.run(record)
        assert observed(result, calls) == expected
        for i in range(len(table)):
            lower = step_name(i).lower()
            assert result.bag.job(lower) == expected.bag["job"].get(step_name(i))
            assert result.bag.has_precheck(lower) == (step_name(i) in expected.bag["precheck"])
        if expected.status == "failed":
            assert result.steps[expected.errors[-1][0]] == "failed"


@settings(derandomize=True, database=None, max_examples=100, deadline=None)
@given(tables)
def test_run_many_gives_the_same_results_as_run(
    table: list[tuple[PrecheckAction, JobAction]],
) -> None:
    calls: list[tuple[str, str]] = []
    coordinator = build(table, calls)
    results = list(coordinator.run_many(range(4)))
    assert [r.index for r in results] == [0, 1, 2, 3]
    for record, result in enumerate(results):
        expected = model(table, record)
        got = observed(result, [])
        assert dataclasses.replace(got, calls=[]) == dataclasses.replace(expected, calls=[])
    assert calls == [c for record in range(4) for c in model(table, record).calls]
