"""Parity with choreograph's README and design.md §2-§3: one test per behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import threading
import typing
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, Union

import pytest

from choreo_cli import (
    Cancel,
    Context,
    Coordinator,
    DataBag,
    ExecutionCanceled,
    Interrupted,
    JobFailed,
    ResourceError,
    Skip,
    Step,
    StepDefinitionError,
    UnassignableInput,
)
from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.core.resources import ResourceSpec

# -- helpers ------------------------------------------------------------------------------


class Calls:
    """Records (step, phase) of every callable call, thread-safe."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def add(self, step: str, phase: str) -> None:
        with self._lock:
            self.log.append((step, phase))

    def precheck(self, step: str, action: Callable[[], Any] = lambda: None) -> Callable[..., Any]:
        def precheck(ctx: Context, record: Any) -> Any:
            self.add(step, "precheck")
            return action()

        return precheck

    def job(self, step: str, action: Callable[[], Any] = lambda: None) -> Callable[..., Any]:
        def job(ctx: Context, record: Any) -> Any:
            self.add(step, "job")
            return action()

        return job


def raises(exc: BaseException) -> Callable[[], Any]:
    def action() -> Any:
        raise exc

    return action


def returns(value: Any) -> Callable[[], Any]:
    return lambda: value


def noop(ctx: Context, record: Any = None) -> None:
    return None


def raises_fn(exc: BaseException) -> Callable[..., Any]:
    def fn(ctx: Context, record: Any = None) -> Any:
        raise exc

    return fn


def raise_if(condition: bool, exc: BaseException) -> None:
    if condition:
        raise exc


def coordinator_of(*steps: Step, **kwargs: Any) -> Coordinator:
    coordinator = Coordinator(**kwargs)
    for step in steps:
        coordinator.add_step(step)
    return coordinator


def summary(result: Any) -> list[tuple[str | None, str | None, str]]:
    return [(e.step, e.phase, e.type) for e in result.errors]


# -- order of execution -------------------------------------------------------------------


def test_ten_steps_run_in_order_precheck_before_job() -> None:
    calls = Calls()
    names = [f"step {n}" for n in range(10)]
    coordinator = coordinator_of(
        *(Step(name=n, job=calls.job(n), precheck=calls.precheck(n)) for n in names)
    )
    result = coordinator.run({"id": 1})
    assert calls.log == [(n, phase) for n in names for phase in ("precheck", "job")]
    assert result.status == "succeeded"
    assert result.error is None
    assert result.errors == []
    assert result.steps == dict.fromkeys(names, "succeeded")
    assert [s.name for s in coordinator.steps] == names


def test_step_without_precheck_always_runs_its_job() -> None:
    calls = Calls()
    coordinator = coordinator_of(Step(name="only", job=calls.job("only")))
    result = coordinator.run(None)
    assert calls.log == [("only", "job")]
    assert result.steps == {"only": "succeeded"}


# -- precheck -----------------------------------------------------------------------------


def test_precheck_return_value_is_stored_as_precheck_data() -> None:
    calls = Calls()
    coordinator = coordinator_of(
        Step(name="a", precheck=calls.precheck("a", returns("pre-a")), job=calls.job("a"))
    )
    result = coordinator.run(1)
    assert calls.log == [("a", "precheck"), ("a", "job")]
    assert result.bag.precheck("a") == "pre-a"
    assert result.bag.has_precheck("a")
    assert not result.bag.has_job("a")


def test_precheck_skip_keeps_data_skips_job_and_runs_next_step() -> None:
    calls = Calls()
    coordinator = coordinator_of(
        Step(
            name="create statement",
            precheck=calls.precheck("create statement", raises(Skip("exists", data="rec-7"))),
            job=calls.job("create statement"),
        ),
        Step(name="create line", job=calls.job("create line", returns("line-1"))),
    )
    result = coordinator.run({"id": "a"})
    assert calls.log == [("create statement", "precheck"), ("create line", "job")]
    assert result.status == "succeeded"
    assert result.error is None
    assert result.bag.precheck("create statement") == "rec-7"
    assert not result.bag.has_job("create statement")
    assert result.bag.job("create line") == "line-1"
    assert summary(result) == [("create statement", "precheck", "Skip")]
    assert result.errors[0].message == "exists"
    assert result.steps == {"create statement": "skipped", "create line": "succeeded"}


def test_precheck_skip_without_data_stores_nothing() -> None:
    coordinator = coordinator_of(Step(name="a", precheck=raises_fn(Skip("no")), job=noop))
    result = coordinator.run(1)
    assert not result.bag.has_precheck("a")
    assert result.steps == {"a": "skipped"}


def test_precheck_cancel_cancels_record_and_nothing_later_runs() -> None:
    calls = Calls()
    coordinator = coordinator_of(
        Step(name="a", precheck=calls.precheck("a"), job=calls.job("a", returns(1))),
        Step(name="b", precheck=calls.precheck("b", raises(Cancel("db down"))), job=calls.job("b")),
        Step(name="c", precheck=calls.precheck("c"), job=calls.job("c")),
    )
    result = coordinator.run(1)
    assert calls.log == [("a", "precheck"), ("a", "job"), ("b", "precheck")]
    assert result.status == "cancelled"
    assert result.error is not None
    assert (result.error.step, result.error.phase, result.error.type) == ("b", "precheck", "Cancel")
    assert result.error.message == "db down"
    assert summary(result) == [("b", "precheck", "Cancel")]
    assert result.steps == {"a": "succeeded", "b": "cancelled", "c": "not_run"}
    assert result.bag.job("a") == 1


def test_execution_canceled_is_an_alias_of_cancel() -> None:
    assert ExecutionCanceled is Cancel


def test_precheck_other_exception_is_like_skip_recorded_with_its_type() -> None:
    calls = Calls()
    coordinator = coordinator_of(
        Step(
            name="a",
            precheck=calls.precheck("a", raises(LookupError("exists"))),
            job=calls.job("a"),
        ),
        Step(name="b", job=calls.job("b")),
    )
    result = coordinator.run(1)
    assert calls.log == [("a", "precheck"), ("b", "job")]
    assert result.status == "succeeded"
    assert result.error is None
    assert summary(result) == [("a", "precheck", "LookupError")]
    assert result.steps == {"a": "skipped", "b": "succeeded"}
    assert not result.bag.has_precheck("a")


# -- job ----------------------------------------------------------------------------------


def test_job_cancel_cancels_record() -> None:
    calls = Calls()
    coordinator = coordinator_of(
        Step(name="a", job=calls.job("a", raises(Cancel("stop")))),
        Step(name="b", job=calls.job("b")),
    )
    result = coordinator.run(1)
    assert calls.log == [("a", "job")]
    assert result.status == "cancelled"
    assert result.error is not None
    assert (result.error.step, result.error.phase, result.error.type) == ("a", "job", "Cancel")
    assert summary(result) == [("a", "job", "Cancel")]
    assert result.steps == {"a": "cancelled", "b": "not_run"}


def test_job_exception_fails_record_and_later_steps_do_not_run() -> None:
    calls = Calls()
    coordinator = coordinator_of(
        Step(name="a", job=calls.job("a", returns("x"))),
        Step(name="b", precheck=calls.precheck("b"), job=calls.job("b", raises(ValueError("bad")))),
        Step(name="c", precheck=calls.precheck("c"), job=calls.job("c")),
    )
    result = coordinator.run(1)
    assert calls.log == [("a", "job"), ("b", "precheck"), ("b", "job")]
    assert result.status == "failed"
    assert result.error is not None
    assert (result.error.step, result.error.phase, result.error.type) == ("b", "job", "ValueError")
    assert result.error.to_json() == {
        "step": "b",
        "phase": "job",
        "type": "ValueError",
        "message": "bad",
    }
    assert result.steps == {"a": "succeeded", "b": "failed", "c": "not_run"}
    assert result.bag.job("a") == "x"


def test_raise_for_status_raises_job_failed_for_a_failed_job() -> None:
    error = ValueError("bad amount")
    coordinator = coordinator_of(Step(name="load", job=raises_fn(error)))
    result = coordinator.run(1)
    with pytest.raises(JobFailed, match=r"^step 'load': ValueError: bad amount$") as info:
        result.raise_for_status()
    assert info.value.__cause__ is error
    ok = coordinator_of(Step(name="load", job=noop)).run(1)
    assert ok.raise_for_status() is None
    assert ok.ok


def test_raise_for_status_raises_cancel_for_a_cancelled_record() -> None:
    result = coordinator_of(Step(name="a", job=raises_fn(Cancel("no")))).run(1)
    with pytest.raises(Cancel, match="no"):
        result.raise_for_status()


@pytest.mark.parametrize("exc_type", [SystemExit, GeneratorExit])
@pytest.mark.parametrize("phase", ["precheck", "job"])
def test_system_exit_and_generator_exit_are_just_the_callables_error(
    exc_type: type[BaseException], phase: str
) -> None:
    calls = Calls()
    bad = raises(exc_type("bye"))
    if phase == "precheck":
        first = Step(name="a", precheck=calls.precheck("a", bad), job=calls.job("a"))
    else:
        first = Step(name="a", job=calls.job("a", bad))
    coordinator = coordinator_of(first, Step(name="b", job=calls.job("b")))
    results = list(coordinator.run_many([1, 2]))
    assert [r.index for r in results] == [0, 1]
    assert not coordinator.interrupted
    for result in results:
        assert summary(result) == [("a", phase, exc_type.__name__)]
        if phase == "precheck":
            assert result.status == "succeeded"
            assert result.steps == {"a": "skipped", "b": "succeeded"}
        else:
            assert result.status == "failed"
            assert result.steps == {"a": "failed", "b": "not_run"}
    expected = [("a", "precheck"), ("b", "job")] if phase == "precheck" else [("a", "job")]
    assert calls.log == expected * 2


@pytest.mark.parametrize("phase", ["precheck", "job"])
def test_keyboard_interrupt_in_a_callable_interrupts_the_run(phase: str) -> None:
    calls = Calls()
    read: list[int] = []

    def records() -> Iterator[int]:
        for n in range(10):
            read.append(n)
            yield n

    def maybe_interrupt() -> Any:
        if len(read) == 3:
            raise KeyboardInterrupt
        return None

    if phase == "precheck":
        first = Step(name="a", precheck=calls.precheck("a", maybe_interrupt), job=calls.job("a"))
    else:
        first = Step(name="a", job=calls.job("a", maybe_interrupt))
    coordinator = coordinator_of(first, Step(name="b", job=calls.job("b")))
    results = list(coordinator.run_many(records()))
    assert coordinator.interrupted
    assert read == [0, 1, 2]
    assert [r.status for r in results] == ["succeeded", "succeeded", "cancelled"]
    last = results[-1]
    assert last.error is not None
    assert isinstance(last.error.exception, Interrupted)
    assert last.error.message == "interrupted during step 'a'"
    assert last.errors == []  # an interruption adds nothing to the execution errors
    assert last.steps == {"a": "cancelled", "b": "not_run"}
    assert calls.log.count(("b", "job")) == 2


# -- data bag -----------------------------------------------------------------------------


def test_none_is_not_stored() -> None:
    coordinator = coordinator_of(Step(name="a", precheck=noop, job=noop))
    result = coordinator.run(1)
    assert not result.bag.has_job("a")
    assert not result.bag.has_precheck("a")
    assert result.bag.job("a", default="missing") == "missing"
    assert result.bag.as_dict() == {"precheck": {}, "job": {}}


def test_falsy_values_other_than_none_are_stored() -> None:
    coordinator = coordinator_of(Step(name="a", precheck=lambda ctx: 0, job=lambda ctx: ""))
    result = coordinator.run(1)
    assert result.bag.has_precheck("a") and result.bag.precheck("a") == 0
    assert result.bag.has_job("a") and result.bag.job("a") == ""


def test_bag_is_shared_between_steps_and_case_insensitive() -> None:
    seen: dict[str, Any] = {}

    def create_line(ctx: Context, record: Any) -> str:
        seen["job"] = ctx.bag.job("create statement")
        seen["pre"] = ctx.bag.precheck("CREATE STATEMENT")
        seen["has"] = ctx.bag.has_job("Create statement"), ctx.bag.has_precheck("create Statement")
        return "line"

    coordinator = coordinator_of(
        Step(name="Create Statement", precheck=lambda ctx: "checked", job=lambda ctx: "stmt-1"),
        Step(name="create line", job=create_line),
    )
    result = coordinator.run({"id": "a"})
    assert seen == {"job": "stmt-1", "pre": "checked", "has": (True, True)}
    assert result.bag.as_dict() == {
        "precheck": {"Create Statement": "checked"},
        "job": {"Create Statement": "stmt-1", "create line": "line"},
    }


def test_bag_set_methods_and_standalone_bag() -> None:
    def job(ctx: Context) -> None:
        ctx.bag.set_job("Extra", 1)
        ctx.bag.set_precheck("a", 2)

    result = coordinator_of(Step(name="a", job=job)).run(None)
    assert result.bag.job("extra") == 1
    assert result.bag.precheck("A") == 2
    assert result.bag.as_dict() == {"precheck": {"a": 2}, "job": {"Extra": 1}}
    bag = DataBag()
    bag.set_job("Create Statement", 7)
    assert (bag.job("create statement"), bag.has_job("CREATE STATEMENT")) == (7, True)


def test_readme_statement_example() -> None:
    """choreograph's README: the line job falls back on the precheck's statement id."""
    statements = {"a": "stmt-a"}
    lines: list[tuple[str, float]] = []

    def statement_exists(ctx: Context, record: dict[str, Any]) -> None:
        if record["statementId"] in statements:
            raise Skip("statement exists!", data=statements[record["statementId"]])

    def create_statement(ctx: Context, record: dict[str, Any]) -> str:
        statements[record["statementId"]] = f"stmt-{record['statementId']}"
        return statements[record["statementId"]]

    def create_lines(ctx: Context, record: dict[str, Any]) -> None:
        statement = ctx.bag.job("create statement") or ctx.bag.precheck("create statement")
        lines.append((statement, record["amount"]))

    coordinator = coordinator_of(
        Step(name="create statement", precheck=statement_exists, job=create_statement),
        Step(name="create statement lines", job=create_lines),
    )
    inputs = [
        {"statementId": "a", "amount": 3.13},
        {"statementId": "b", "amount": 6.11},
        {"statementId": "b", "amount": 76.33},
    ]
    results = list(coordinator.run_many(inputs))
    assert [r.status for r in results] == ["succeeded"] * 3
    assert lines == [("stmt-a", 3.13), ("stmt-b", 6.11), ("stmt-b", 76.33)]
    assert [summary(r) for r in results] == [
        [("create statement", "precheck", "Skip")],
        [],
        [("create statement", "precheck", "Skip")],
    ]


# -- error stack, clean state per record --------------------------------------------------


def test_error_stack_keeps_order_of_errors() -> None:
    coordinator = coordinator_of(
        Step(name="one", precheck=raises_fn(Skip("s1")), job=noop),
        Step(name="two", precheck=raises_fn(KeyError("k")), job=noop),
        Step(name="three", job=noop),
        Step(name="four", precheck=raises_fn(Skip("s4")), job=noop),
        Step(name="five", job=raises_fn(RuntimeError("boom"))),
        Step(name="six", job=noop),
    )
    result = coordinator.run(1)
    assert summary(result) == [
        ("one", "precheck", "Skip"),
        ("two", "precheck", "KeyError"),
        ("four", "precheck", "Skip"),
        ("five", "job", "RuntimeError"),
    ]
    assert [e.message for e in result.errors] == ["s1", "'k'", "s4", "boom"]
    assert result.error is result.errors[-1]
    assert result.steps == {
        "one": "skipped",
        "two": "skipped",
        "three": "succeeded",
        "four": "skipped",
        "five": "failed",
        "six": "not_run",
    }


def test_every_record_starts_with_clean_bag_and_errors_even_after_a_failure() -> None:
    def first(ctx: Context, record: int) -> int:
        assert not ctx.bag.has_job("first") and not ctx.bag.has_job("second")
        if record == 1:
            raise Skip("skip", data=f"pre-{record}")
        return record

    def second(ctx: Context, record: int) -> int:
        if record == 2:
            raise ValueError("fails")
        return record * 10

    coordinator = coordinator_of(
        Step(name="first", precheck=first, job=lambda ctx, record: record),
        Step(name="second", job=second),
    )
    r1, r2, r3 = (coordinator.run(n, index=n) for n in (1, 2, 3))
    assert r1.status == "succeeded" and summary(r1) == [("first", "precheck", "Skip")]
    assert r1.bag.as_dict() == {"precheck": {"first": "pre-1"}, "job": {"second": 10}}
    assert r2.status == "failed" and summary(r2) == [("second", "job", "ValueError")]
    assert r3.status == "succeeded"
    assert r3.errors == [] and r3.error is None
    assert r3.bag.as_dict() == {"precheck": {"first": 3}, "job": {"first": 3, "second": 30}}
    assert r3.steps == {"first": "succeeded", "second": "succeeded"}
    # earlier results are not changed by later records
    assert r1.bag.as_dict() == {"precheck": {"first": "pre-1"}, "job": {"second": 10}}
    assert summary(r2) == [("second", "job", "ValueError")]


def test_step_outcomes_for_every_case() -> None:
    coordinator = coordinator_of(
        Step(name="ok", job=noop),
        Step(name="skipped", precheck=raises_fn(Skip("s")), job=noop),
        Step(name="failed", job=lambda ctx, record: 1 / record),
        Step(name="cancelled", job=lambda ctx, record: raise_if(record == 2, Cancel("c"))),
        Step(name="never", job=noop),
    )
    failed = coordinator.run(0)
    cancelled = coordinator.run(2)
    succeeded = coordinator.run(1)
    assert failed.steps == {
        "ok": "succeeded",
        "skipped": "skipped",
        "failed": "failed",
        "cancelled": "not_run",
        "never": "not_run",
    }
    assert failed.status == "failed"
    assert cancelled.steps == {
        "ok": "succeeded",
        "skipped": "skipped",
        "failed": "succeeded",
        "cancelled": "cancelled",
        "never": "not_run",
    }
    assert cancelled.status == "cancelled"
    assert succeeded.steps == {
        "ok": "succeeded",
        "skipped": "skipped",
        "failed": "succeeded",
        "cancelled": "succeeded",
        "never": "succeeded",
    }
    assert succeeded.status == "succeeded"


def test_invalid_line_item_gives_an_invalid_result() -> None:
    calls = Calls()
    coordinator = coordinator_of(Step(name="a", job=calls.job("a")))
    bad = ValueError("Expecting value: line 1 column 1 (char 0)")
    results = list(coordinator.run_many([Record(1, 1), InvalidLine(2, bad, b"{"), Record(3, 3)]))
    assert [r.status for r in results] == ["succeeded", "invalid", "succeeded"]
    invalid = results[1]
    assert invalid.line == 2
    assert invalid.error is not None
    assert (invalid.error.step, invalid.error.phase) == (None, "input")
    assert invalid.error.exception is bad
    assert invalid.steps == {"a": "not_run"}
    assert calls.log == [("a", "job")] * 2


# -- record types -------------------------------------------------------------------------


@dataclasses.dataclass
class Line:
    statement: str
    amount: float
    built: typing.ClassVar[int] = 0

    def __post_init__(self) -> None:
        type(self).built += 1


class FakeModel:
    """Not pydantic: any class with a ``model_validate`` classmethod."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @classmethod
    def model_validate(cls, value: Any) -> FakeModel:
        if not isinstance(value, dict) or "id" not in value:
            raise ValueError("needs an id")
        return cls(value)


class Opaque:
    """An annotation choreo knows nothing about: the raw value is passed."""


def typed(annotation: Any) -> tuple[Callable[..., Any], list[Any]]:
    seen: list[Any] = []

    def job(ctx: Context, record: Any) -> None:
        seen.append(record)

    job.__annotations__ = {"ctx": Context, "record": annotation, "return": None}
    return job, seen


def run_typed(annotation: Any, value: Any) -> tuple[Any, list[Any]]:
    job, seen = typed(annotation)
    result = coordinator_of(Step(name="load", job=job)).run(value)
    return result, seen


ACCEPTED: list[tuple[str, Any, Any]] = [
    ("none", None, {"a": 1}),
    ("Any", Any, [1, "x"]),
    ("object", object, "text"),
    ("dict", dict, {"a": 1}),
    ("list", list, [1, 2]),
    ("str", str, "x"),
    ("int", int, 3),
    ("float takes float", float, 1.5),
    ("float takes int", float, 2),
    ("bool", bool, True),
    ("Optional[int]", Optional[int], 4),  # noqa: UP045 - the typing spelling is the case
    ("int | None", int | None, 4),
    ("dict[str, int] outer only", dict[str, int], {"a": "not an int"}),
    ("list[int] outer only", list[int], ["x", None]),
    ("typing.Dict[str, int]", typing.Dict[str, int], {"a": "x"}),  # noqa: UP006
    ("tuple[int, ...] is raw", tuple[int, ...], [1, 2]),
    ("Sequence[int] is raw", Sequence[int], {"a": 1}),
    ("Literal is raw", typing.Literal["a"], "b"),
    ("unknown class is raw", Opaque, {"any": "thing"}),
    ("unresolvable string is raw", "NoSuchName", 5),
]


@pytest.mark.parametrize(
    ("annotation", "value"),
    [(a, v) for _, a, v in ACCEPTED],
    ids=[case for case, _, _ in ACCEPTED],
)
def test_record_type_accepts_and_passes_raw_value(annotation: Any, value: Any) -> None:
    if annotation is None:
        seen: list[Any] = []
        job: Callable[..., Any] = lambda ctx, record: seen.append(record)  # noqa: E731
        result = coordinator_of(Step(name="load", job=job)).run(value)
    else:
        result, seen = run_typed(annotation, value)
    assert result.status == "succeeded", result.error
    assert seen == [value]
    assert seen[0] is value


REJECTED: list[tuple[str, Any, Any, str, str]] = [
    ("dict gets list", dict, [1], "dict", "array"),
    ("list gets object", list, {"a": 1}, "list", "object"),
    ("str gets int", str, 1, "str", "integer"),
    ("int gets bool", int, True, "int", "boolean"),
    ("int gets float", int, 1.5, "int", "number"),
    ("float gets bool", float, False, "float", "boolean"),
    ("float gets str", float, "1.5", "float", "string"),
    ("bool gets int", bool, 1, "bool", "integer"),
    ("Optional[int] gets str", Optional[int], "x", "Optional[int]", "string"),  # noqa: UP045
    ("int | None gets list", int | None, [], "int | None", "array"),
    ("dict[str, int] gets list", dict[str, int], [], "dict[str, int]", "array"),
    ("list[int] gets str", list[int], "abc", "list[int]", "string"),
    ("int | str gets list", int | str, [1], "int | str", "array"),
    ("dataclass gets list", Line, [1], "Line", "array"),
    ("dataclass gets wrong keys", Line, {"nope": 1}, "Line", "object"),
    ("model gets object without id", FakeModel, {"x": 1}, "FakeModel", "object"),
]


@pytest.mark.parametrize(
    ("annotation", "value", "shown", "json_type"),
    [(a, v, shown, t) for _, a, v, shown, t in REJECTED],
    ids=[case for case, *_ in REJECTED],
)
def test_record_type_mismatch_makes_record_invalid(
    annotation: Any, value: Any, shown: str, json_type: str
) -> None:
    calls = Calls()
    job, seen = typed(annotation)
    coordinator = coordinator_of(
        Step(name="first", job=calls.job("first")),
        Step(name="load", precheck=calls.precheck("load"), job=job, job_name="steps:load"),
        Step(name="after", job=calls.job("after")),
    )
    result = coordinator.run(value)
    assert seen == []  # the callable is never called
    assert calls.log == [("first", "job"), ("load", "precheck")]
    assert result.status == "invalid"
    assert result.error is not None
    assert isinstance(result.error.exception, UnassignableInput)
    assert (result.error.step, result.error.phase) == ("load", "job")
    assert result.error.message.startswith(
        f"step 'load': steps:load declares its record as {shown}, but got a JSON {json_type} ("
    )
    assert summary(result) == [("load", "job", "UnassignableInput")]
    assert result.steps == {"first": "succeeded", "load": "not_run", "after": "not_run"}
    with pytest.raises(UnassignableInput):
        result.raise_for_status()


def test_record_type_mismatch_message_names_step_callable_and_both_types() -> None:
    job, _ = typed(int)
    coordinator = coordinator_of(Step(name="Load", job=job, job_name="steps:load"))
    result = coordinator.run("12")
    assert result.error is not None
    assert result.error.message == (
        "step 'Load': steps:load declares its record as int, "
        "but got a JSON string (a JSON string is not an int)"
    )


def test_record_type_mismatch_in_precheck_calls_nothing() -> None:
    calls = Calls()
    precheck, seen = typed(dict)
    coordinator = coordinator_of(Step(name="a", precheck=precheck, job=calls.job("a")))
    result = coordinator.run([1])
    assert seen == [] and calls.log == []
    assert result.status == "invalid"
    assert summary(result) == [("a", "precheck", "UnassignableInput")]
    assert result.steps == {"a": "not_run"}


@pytest.mark.parametrize("annotation", [int, str, Line, FakeModel, dict[str, int], Opaque])
def test_json_null_is_passed_as_none_whatever_the_annotation(annotation: Any) -> None:
    result, seen = run_typed(annotation, None)
    assert result.status == "succeeded"
    assert seen == [None]


def test_dataclass_is_built_with_keyword_arguments() -> None:
    result, seen = run_typed(Line, {"statement": "a", "amount": 3.13})
    assert result.status == "succeeded"
    assert seen == [Line("a", 3.13)]
    assert result.input == {"statement": "a", "amount": 3.13}  # the raw value is kept


@dataclasses.dataclass
class Amount:
    value: float

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("negative amount")


def test_dataclass_that_refuses_the_record_makes_it_invalid() -> None:
    calls = Calls()

    def check(ctx: Context, record: Amount) -> None:
        calls.add("a", "precheck")

    def load(ctx: Context, record: Amount) -> None:
        calls.add("a", "job")

    coordinator = coordinator_of(Step(name="a", precheck=check, job=load))
    result = coordinator.run({"value": -1})
    assert calls.log == []
    assert result.status == "invalid"
    assert result.error is not None
    assert result.error.message == (
        f"step 'a': {__name__}:test_dataclass_that_refuses_the_record_makes_it_invalid"
        ".<locals>.check declares its record as Amount, but got a JSON object "
        "(ValueError: negative amount)"
    )
    assert coordinator.run({"value": 1}).status == "succeeded"
    assert calls.log == [("a", "precheck"), ("a", "job")]


def test_fake_model_validate_is_used() -> None:
    result, seen = run_typed(FakeModel, {"id": 1})
    assert result.status == "succeeded"
    assert isinstance(seen[0], FakeModel) and seen[0].data == {"id": 1}


def test_pydantic_model_is_validated() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Statement(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        id: str
        amount: float

    result, seen = run_typed(Statement, {"id": "a", "amount": "3.5"})
    assert result.status == "succeeded"
    assert seen == [Statement(id="a", amount=3.5)]
    bad, _ = run_typed(Statement, {"id": "a"})
    assert bad.status == "invalid"
    assert bad.error is not None
    assert ".<locals>.Statement, but got a JSON object (ValidationError: " in bad.error.message


def test_other_union_uses_first_member_that_fits() -> None:
    result, seen = run_typed(Union[Line, dict], {"x": 1})  # noqa: UP007
    assert result.status == "succeeded" and seen == [{"x": 1}]
    result, seen = run_typed(Line | dict, {"statement": "s", "amount": 1})
    assert seen == [Line("s", 1)]
    result, seen = run_typed(int | str, "a")
    assert seen == ["a"]
    result, seen = run_typed(int | float, True)
    assert result.status == "invalid"


def test_string_annotations_are_resolved_from_the_callables_module() -> None:
    # This module uses `from __future__ import annotations`: every annotation is a string.
    seen: list[Any] = []

    def job(ctx: Context, record: Line) -> None:
        seen.append(record)

    def job_unresolvable_ctx(ctx: NotImported, record: Line) -> None:  # type: ignore[name-defined]  # noqa: F821
        seen.append(record)

    coordinator = coordinator_of(Step(name="a", job=job), Step(name="b", job=job_unresolvable_ctx))
    result = coordinator.run({"statement": "s", "amount": 1.0})
    assert result.status == "succeeded"
    assert seen == [Line("s", 1.0)] * 2
    assert coordinator.run("x").status == "invalid"


def test_conversion_happens_once_per_record_and_type() -> None:
    seen: list[Any] = []

    def check(ctx: Context, record: Line) -> None:
        seen.append(record)

    def load(ctx: Context, record: Optional[Line]) -> None:  # noqa: UP045
        seen.append(record)

    def other(ctx: Context, record: dict[str, Any] | None) -> None:
        seen.append(record)

    coordinator = coordinator_of(
        Step(name="a", precheck=check, job=load),
        Step(name="b", job=check),
        Step(name="c", precheck=lambda ctx, record: None, job=other),
    )
    before = Line.built
    for n in range(3):
        result = coordinator.run({"statement": str(n), "amount": n})
        assert result.status == "succeeded", result.error
    assert Line.built - before == 3  # one Line per record, shared by the three callables
    lines = [s for s in seen if isinstance(s, Line)]
    assert len(lines) == 9
    assert [s for s in seen if not isinstance(s, Line)] == [
        {"statement": str(n), "amount": n} for n in range(3)
    ]
    assert lines[0] is lines[1] is lines[2]
    assert lines[3] is not lines[0]


# -- step definitions ---------------------------------------------------------------------


def takes_nothing() -> None:
    pass


def takes_three(ctx: Context, record: Any, extra: Any) -> None:
    pass


def takes_limit(ctx: Context, record: Any, *, limit: int) -> int:
    return limit


def star_args(*args: Any) -> int:
    return len(args)


def only_kwargs(**kwargs: Any) -> None:
    pass


DEFINITION_ERRORS = [
    (
        "not callable",
        {"job": 42, "job_name": "steps:answer"},
        "step 'bad': job steps:answer: is not callable (it is a int)",
    ),
    (
        "no ctx",
        {"job": takes_nothing, "job_name": "steps:nothing"},
        "step 'bad': job steps:nothing: takes no ctx parameter: write it as f(ctx) or f(ctx, record)",
    ),
    (
        "only **kwargs",
        {"job": only_kwargs, "job_name": "steps:kw"},
        "step 'bad': job steps:kw: takes no ctx parameter: write it as f(ctx) or f(ctx, record)",
    ),
    (
        "too many positional",
        {"job": takes_three, "job_name": "steps:three"},
        "step 'bad': job steps:three: needs more positional parameters than ctx, record "
        "(also extra): give them defaults, make them keyword-only, or set them under with:",
    ),
    (
        "unknown with key",
        {"job": takes_limit, "job_with": {"limit": 1, "limt": 2}, "job_name": "steps:lim"},
        "step 'bad': job steps:lim: does not accept the keyword argument 'limt' given in with: "
        "— did you mean 'limit'?",
    ),
    (
        "missing required keyword",
        {"job": takes_limit, "job_name": "steps:lim"},
        "step 'bad': job steps:lim: requires the keyword argument 'limit': "
        "add it under the step's with:",
    ),
    (
        "precheck checked too",
        {"job": noop, "precheck": "not a function", "precheck_name": "steps:exists"},
        "step 'bad': precheck steps:exists: is not callable (it is a str)",
    ),
]


@pytest.mark.parametrize(
    ("fields", "message"),
    [(f, m) for _, f, m in DEFINITION_ERRORS],
    ids=[case for case, _, _ in DEFINITION_ERRORS],
)
def test_definition_errors_are_raised_at_add_step(fields: dict[str, Any], message: str) -> None:
    coordinator = Coordinator()
    with pytest.raises(StepDefinitionError) as info:
        coordinator.add_step(Step(name="bad", **fields))
    assert str(info.value) == message
    assert info.value.step == "bad"
    assert coordinator.steps == ()


def test_definition_error_names_the_callable_by_module_and_qualname() -> None:
    with pytest.raises(StepDefinitionError) as info:
        Coordinator().add_step(Step(name="bad", job=takes_three))
    assert str(info.value).startswith(
        f"step 'bad': job {__name__}:takes_three: needs more positional parameters"
    )


def test_duplicate_step_names_are_refused_case_insensitively() -> None:
    coordinator = coordinator_of(Step(name="Create Statement", job=noop))
    with pytest.raises(StepDefinitionError) as info:
        coordinator.add_step(Step(name="create statement", job=noop))
    assert str(info.value) == (
        "step 'create statement': a step named 'Create Statement' already exists "
        "(names are case-insensitive)"
    )
    assert [s.name for s in coordinator.steps] == ["Create Statement"]
    assert coordinator.run(1).steps == {"Create Statement": "succeeded"}


def test_with_keywords_are_bound() -> None:
    coordinator = coordinator_of(
        Step(
            name="a",
            precheck=takes_limit,
            precheck_with={"limit": 5},
            job=takes_limit,
            job_with={"limit": 3},
        ),
        Step(name="b", job=star_args),
    )
    result = coordinator.run({"x": 1})
    assert result.bag.precheck("a") == 5
    assert result.bag.job("a") == 3
    assert result.bag.job("b") == 2  # *args takes ctx and the record


def test_with_can_fill_a_positional_parameter_and_kwargs() -> None:
    def job(ctx: Context, record: Any, scale: int) -> Any:
        return record * scale

    def flexible(ctx: Context, **options: Any) -> Any:
        return options

    coordinator = coordinator_of(
        Step(name="a", job=job, job_with={"scale": 10}),
        Step(name="b", job=flexible, job_with={"x": 1}),
    )
    result = coordinator.run(2)
    assert result.bag.job("a") == 20
    assert result.bag.job("b") == {"x": 1}


# -- async --------------------------------------------------------------------------------


async def async_check(ctx: Context, record: int) -> int:
    await asyncio.sleep(0)
    if record % 3 == 0:
        raise Skip("multiple of three", data=record)
    return -record


async def async_job(ctx: Context, record: int) -> int:
    await asyncio.sleep(0)
    if record == 4:
        raise ValueError("four")
    return record * 2


async def async_line(ctx: Context, record: Line) -> str:
    await asyncio.sleep(0)
    return record.statement


def test_async_callables_in_run() -> None:
    with coordinator_of(Step(name="a", precheck=async_check, job=async_job)) as coordinator:
        ok = coordinator.run(2)
        skipped = coordinator.run(3)
        failed = coordinator.run(4)
    assert (ok.status, ok.bag.precheck("a"), ok.bag.job("a")) == ("succeeded", -2, 4)
    assert skipped.steps == {"a": "skipped"} and skipped.bag.precheck("a") == 3
    assert failed.status == "failed" and summary(failed) == [("a", "job", "ValueError")]


@pytest.mark.parametrize("workers", [1, 3])
def test_async_callables_in_run_many(workers: int) -> None:
    with (
        coordinator_of(
            Step(name="a", precheck=async_check, job=async_job), workers=workers
        ) as numbers,
        coordinator_of(Step(name="b", job=async_line), workers=workers) as lines,
    ):
        by_number = list(numbers.run_many(range(1, 7)))
        records = [{"statement": f"s{n}", "amount": n} for n in range(6)]
        by_line = list(lines.run_many([*records, "not a line"]))
    assert [r.status for r in by_number] == ["succeeded"] * 3 + ["failed", "succeeded", "succeeded"]
    assert by_number[0].bag.as_dict() == {"precheck": {"a": -1}, "job": {"a": 2}}
    assert by_number[2].steps == {"a": "skipped"}
    assert by_number[2].bag.as_dict() == {"precheck": {"a": 3}, "job": {}}
    assert [r.bag.job("b") for r in by_line] == [f"s{n}" for n in range(6)] + [None]
    assert by_line[-1].status == "invalid"


@pytest.mark.parametrize("exc_type", [SystemExit, GeneratorExit])
def test_system_exit_inside_async_job_is_just_its_error(exc_type: type[BaseException]) -> None:
    async def job(ctx: Context) -> None:
        await asyncio.sleep(0)
        raise exc_type("bye")

    with coordinator_of(Step(name="a", job=job)) as coordinator:
        results = list(coordinator.run_many([1, 2]))
    assert [summary(r) for r in results] == [[("a", "job", exc_type.__name__)]] * 2
    assert not coordinator.interrupted


def test_async_callable_object_is_awaited() -> None:
    class Job:
        async def __call__(self, ctx: Context, record: int) -> int:
            await asyncio.sleep(0)
            return record + 1

    with coordinator_of(Step(name="a", job=Job())) as coordinator:
        assert coordinator.run(1).bag.job("a") == 2


def test_async_without_close_does_not_leak_the_event_loop() -> None:
    coordinator = coordinator_of(Step(name="a", precheck=async_check, job=async_job))
    assert coordinator.run(1).bag.job("a") == 2  # used as in §3's example: no `with`
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del coordinator
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# -- ctx ----------------------------------------------------------------------------------


def test_ctx_fields() -> None:
    seen: list[dict[str, Any]] = []

    def job(ctx: Context, record: Any) -> str:
        with pytest.raises(TypeError):
            ctx.values["currency"] = "USD"  # type: ignore[index]
        seen.append(
            {
                "values": dict(ctx.values),
                "db attr": ctx.resources.db,  # type: ignore[union-attr]
                "db key": ctx.resources["db"],
                "bag": ctx.bag.precheck("Check"),
                "record": ctx.record,
                "arg is record": ctx.record is record,
                "index": ctx.index,
                "line": ctx.line,
                "step": ctx.step,
                "cancelled": ctx.cancelled,
                "log": ctx.log.name,
                "logger": isinstance(ctx.log, logging.Logger),
            }
        )
        return "done"

    db = object()
    coordinator = coordinator_of(
        Step(name="Check", precheck=lambda ctx: ctx.step, job=job),
        values={"currency": "EUR"},
        resources={"db": db},
    )
    base = {
        "values": {"currency": "EUR"},
        "db attr": db,
        "db key": db,
        "bag": "Check",
        "arg is record": True,
        "step": "Check",
        "cancelled": False,
        "log": "choreo.step.Check",
        "logger": True,
    }
    coordinator.run({"id": 1}, index=7, line=9)
    list(coordinator.run_many([Record({"id": 2}, 4), {"id": 3}]))
    assert seen == [
        {**base, "record": {"id": 1}, "index": 7, "line": 9},
        {**base, "record": {"id": 2}, "index": 0, "line": 4},
        {**base, "record": {"id": 3}, "index": 1, "line": None},
    ]


def test_ctx_unknown_resource_says_which_exist() -> None:
    def job(ctx: Context) -> None:
        ctx.resources.nope  # type: ignore[union-attr]  # noqa: B018

    result = coordinator_of(Step(name="a", job=job), resources={"db": 1}).run(None)
    assert result.error is not None
    assert result.error.type == "AttributeError"
    assert result.error.message == "no resource named 'nope' (resources: db)"


def test_coordinator_values_are_read_only() -> None:
    values = {"a": 1}
    coordinator = Coordinator(values=values)
    values["a"] = 2
    assert coordinator.values == {"a": 1}
    with pytest.raises(TypeError):
        coordinator.values["a"] = 3  # type: ignore[index]


# -- resources ----------------------------------------------------------------------------


class Closable:
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    def close(self) -> None:
        self.log.append(f"close {self.name}")


def test_given_objects_are_closed_on_exit_in_reverse_order() -> None:
    log: list[str] = []
    resources = {"first": Closable(log, "first"), "plain": 42, "second": Closable(log, "second")}
    with Coordinator(resources=resources) as coordinator:
        coordinator.add_step(Step(name="a", job=lambda ctx: ctx.resources.first.name))
        assert coordinator.run(None).bag.job("a") == "first"
        assert log == []
    assert log == ["close second", "close first"]


def test_pipeline_scope_is_built_once_on_entry() -> None:
    log: list[str] = []

    def connect(dsn: str) -> Closable:
        log.append(f"build {dsn}")
        return Closable(log, dsn)

    spec = ResourceSpec("db", connect, {"dsn": "mem"}, "pipeline")
    coordinator = Coordinator(workers=3, resources={"db": spec})
    coordinator.add_step(Step(name="a", job=lambda ctx: ctx.resources.db.name))
    with coordinator:
        assert log == ["build mem"]
        results = list(coordinator.run_many(range(20)))
    assert [r.bag.job("a") for r in results] == ["mem"] * 20
    # a plain object built by a factory is not a context manager: only given objects get close()
    assert log == ["build mem"]


def test_worker_scope_is_built_once_per_worker_and_closed_in_reverse_order() -> None:
    log: list[tuple[str, str, int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(3, timeout=10)

    def factory(name: str) -> Iterator[str]:
        me = threading.get_ident()
        with lock:
            log.append(("build", name, me))
        yield f"{name}@{me}"
        with lock:
            log.append(("close", name, me))

    resources = {
        "shared": ResourceSpec("shared", factory, {"name": "shared"}, "pipeline"),
        "first": ResourceSpec("first", factory, {"name": "first"}, "worker"),
        "second": ResourceSpec("second", factory, {"name": "second"}, "worker"),
    }

    def job(ctx: Context, record: int) -> tuple[str, str, str]:
        if record < 3:
            barrier.wait()  # the first three records hold a worker each: all three are used
        return (ctx.resources.first, ctx.resources["second"], ctx.resources.shared)

    coordinator = coordinator_of(Step(name="a", job=job), workers=3, resources=resources)
    with coordinator:
        results = list(coordinator.run_many(range(30)))
        results += list(coordinator.run_many(range(3, 9)))  # same workers, nothing rebuilt
    assert all(r.status == "succeeded" for r in results)
    threads = {thread for _, _, thread in log} - {threading.get_ident()}
    assert len(threads) == 3
    for thread in threads:
        assert [(a, n) for a, n, t in log if t == thread] == [
            ("build", "first"),
            ("build", "second"),
            ("close", "second"),
            ("close", "first"),
        ]
    for result in results:  # a record sees the resources of the worker that runs it
        first, second, shared = result.bag.job("a")
        assert first.split("@")[1] == second.split("@")[1] != shared.split("@")[1]
    shared = [(a, n) for a, n, _ in log if n == "shared"]
    assert shared == [("build", "shared"), ("close", "shared")]
    assert log[0][:2] == ("build", "shared")
    assert log[-1][:2] == ("close", "shared")  # built first, closed last


def test_generator_and_context_manager_factories_are_entered_and_closed() -> None:
    log: list[str] = []

    def generator() -> Iterator[str]:
        log.append("gen enter")
        yield "gen value"
        log.append("gen exit")

    class Manager:
        def __enter__(self) -> str:
            log.append("cm enter")
            return "cm value"

        def __exit__(self, *exc: object) -> None:
            log.append("cm exit")

    @contextlib.contextmanager
    def decorated() -> Iterator[str]:
        log.append("decorated enter")
        yield "decorated value"
        log.append("decorated exit")

    resources = {
        "gen": ResourceSpec("gen", generator),
        "cm": ResourceSpec("cm", Manager),
        "dec": ResourceSpec("dec", decorated, scope="worker"),
    }

    def job(ctx: Context) -> list[str]:
        return [ctx.resources.gen, ctx.resources.cm, ctx.resources.dec]  # type: ignore[union-attr]

    with coordinator_of(Step(name="a", job=job), resources=resources) as coordinator:
        assert coordinator.run(None).bag.job("a") == ["gen value", "cm value", "decorated value"]
    assert log == [
        "gen enter",
        "cm enter",
        "decorated enter",
        "decorated exit",
        "cm exit",
        "gen exit",
    ]


def test_failing_factory_raises_resource_error_naming_the_resource() -> None:
    log: list[str] = []

    def good() -> Iterator[str]:
        yield "ok"
        log.append("good closed")

    def broken(dsn: str) -> None:
        raise ConnectionError(f"cannot reach {dsn}")

    resources = {
        "good": ResourceSpec("good", good),
        "db": ResourceSpec("db", broken, {"dsn": "pg://x"}, factory_name="steps:connect"),
    }
    coordinator = Coordinator(resources=resources)
    with pytest.raises(ResourceError) as info, coordinator:
        pytest.fail("the body must not run")
    assert str(info.value) == (
        "resource 'db': factory steps:connect raised ConnectionError: cannot reach pg://x"
    )
    assert isinstance(info.value.__cause__, ConnectionError)
    assert log == ["good closed"]  # what was built before the failure is closed again


@pytest.mark.parametrize("workers", [1, 3])
def test_failing_worker_factory_at_entry_closes_everything_built(workers: int) -> None:
    log: list[str] = []
    lock = threading.Lock()

    def factory(name: str) -> Iterator[str]:
        with lock:
            log.append(f"build {name}")
        yield name
        with lock:
            log.append(f"close {name}")

    def broken() -> None:
        raise OSError("no disk")

    resources = {
        "shared": ResourceSpec("shared", factory, {"name": "shared"}),
        "conn": ResourceSpec("conn", factory, {"name": "conn"}, "worker"),
        "tmp": ResourceSpec("tmp", broken, scope="worker", factory_name="steps:tmp"),
    }
    coordinator = coordinator_of(Step(name="a", job=noop), workers=workers, resources=resources)
    with pytest.raises(ResourceError) as info:
        coordinator.open(prebuild_workers=True)
    assert str(info.value) == "resource 'tmp': factory steps:tmp raised OSError: no disk"
    built = sorted(entry.split()[1] for entry in log if entry.startswith("build"))
    closed = sorted(entry.split()[1] for entry in log if entry.startswith("close"))
    assert closed == built
    assert "shared" in closed
    assert log[-1] == "close shared"


@pytest.mark.parametrize("workers", [1, 3])
def test_worker_factories_wait_for_first_use_unless_prebuilt(workers: int) -> None:
    built: list[str] = []
    lock = threading.Lock()

    def factory() -> str:
        with lock:
            built.append(threading.current_thread().name)
        return "conn"

    resources = {"conn": ResourceSpec("conn", factory, scope="worker")}
    with coordinator_of(Step(name="a", job=noop), workers=workers, resources=resources):
        assert built == []  # design §3: on first use in each worker
    coordinator = coordinator_of(Step(name="a", job=noop), workers=workers, resources=resources)
    coordinator.open(prebuild_workers=True)
    assert len(built) == workers
    coordinator.close()


def test_failing_worker_factory_used_lazily_fails_the_record() -> None:
    def broken() -> None:
        raise OSError("no disk")

    resources = {"tmp": ResourceSpec("tmp", broken, scope="worker")}
    coordinator = coordinator_of(
        Step(name="a", job=lambda ctx: ctx.resources.tmp), resources=resources
    )
    result = coordinator.run(None)  # not opened: the resource is built on first use
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.type == "ResourceError"
    assert result.error.message == (
        "resource 'tmp': factory "
        "test_failing_worker_factory_used_lazily_fails_the_record.<locals>.broken "
        "raised OSError: no disk"
    )
    coordinator.close()


def test_failing_teardown_raises_resource_error_on_close() -> None:
    log: list[str] = []

    def flaky() -> Iterator[str]:
        yield "x"
        raise RuntimeError("commit failed")

    def fine() -> Iterator[str]:
        yield "y"
        log.append("fine closed")

    resources = {"fine": ResourceSpec("fine", fine), "flaky": ResourceSpec("flaky", flaky)}
    coordinator = coordinator_of(Step(name="a", job=noop), resources=resources)
    coordinator.open()
    assert coordinator.run(1).status == "succeeded"
    with pytest.raises(
        ResourceError, match="resource 'flaky': teardown raised RuntimeError: commit failed"
    ):
        coordinator.close()
    assert log == ["fine closed"]  # the other resources are still closed


def test_given_object_close_failure_raises_resource_error() -> None:
    class Bad:
        def close(self) -> None:
            raise OSError("busy")

    coordinator = Coordinator(resources={"conn": Bad()})
    with pytest.raises(ResourceError, match=r"resource 'conn': close\(\) raised OSError\('busy'\)"):
        coordinator.close()


# -- volume -------------------------------------------------------------------------------


def test_thousand_records_through_four_workers_twice_with_exact_call_counts() -> None:
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def count(name: str) -> None:
        with lock:
            counts[name] += 1

    def check(ctx: Context, record: dict[str, int]) -> int:
        count("check")
        if record["n"] % 10 == 0:
            raise Skip("tens", data=record["n"])
        return record["n"]

    def create(ctx: Context, record: dict[str, int]) -> int:
        count("create")
        return record["n"] * 2

    def line_check(ctx: Context, record: dict[str, int]) -> None:
        count("line check")
        if record["n"] % 7 == 0:
            raise LookupError("sevens")

    def line(ctx: Context, record: dict[str, int]) -> int:
        count("line")
        if record["n"] % 100 == 1:
            raise ValueError("bad line")
        return ctx.bag.job("create") or ctx.bag.precheck("create")

    def finish(ctx: Context, record: dict[str, int]) -> None:
        count("finish")
        if record["n"] % 250 == 2:
            raise Cancel("stop")

    def model(n: int) -> tuple[str, Any, list[str]]:
        """(status, bag.job("line"), callables called) for record n, worked out by hand."""
        called = ["check"]
        if n % 10:
            called.append("create")
        called.append("line check")
        if n % 7 == 0:
            line_value = None
        else:
            called.append("line")
            if n % 100 == 1:
                return "failed", None, called
            line_value = n if n % 10 == 0 else n * 2
        called.append("finish")
        return ("cancelled" if n % 250 == 2 else "succeeded"), line_value, called

    expected = [model(n) for n in range(1000)]
    with coordinator_of(
        Step(name="create", precheck=check, job=create),
        Step(name="line", precheck=line_check, job=line),
        Step(name="finish", job=finish),
        workers=4,
    ) as coordinator:
        for _ in range(2):
            results = list(coordinator.run_many({"n": n} for n in range(1000)))
            assert [r.index for r in results] == list(range(1000))
            assert [r.input for r in results] == [{"n": n} for n in range(1000)]
            assert [(r.status, r.bag.job("line")) for r in results] == [
                (status, line_value) for status, line_value, _ in expected
            ]
    wanted: Counter[str] = Counter()
    for _, _, called in expected:
        wanted.update(called)
    assert counts == {name: 2 * n for name, n in wanted.items()}
    assert counts["check"] == 2000
    assert Counter(status for status, _, _ in expected) == {
        "succeeded": 987,
        "failed": 9,
        "cancelled": 4,
    }
