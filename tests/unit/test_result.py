"""Result is a value: named constructors, and every Result pickles and copies."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from choreo_cli import Cancel, Coordinator, Result, RetryPolicy, Skip, Step
from choreo_cli.core.items import InvalidLine


def fields(result: Result) -> dict[str, Any]:
    return {
        "index": result.index,
        "line": result.line,
        "input": result.input,
        "status": result.status,
        "error": None if result.error is None else result.error.to_json(),
        "errors": [e.to_json() for e in result.errors],
        "steps": result.steps,
        "bag": result.bag.as_dict(),
        "attempts": result.attempts,
        "raw": result.raw,
        "clean": result.clean,
    }


def skip_odd(ctx: Any, record: Any) -> None:
    if record % 2:
        raise Skip("odd", data=record)


def fail_on_three(ctx: Any, record: Any) -> int:
    if record == 3:
        raise ValueError("three")
    if record == 4:
        raise Cancel("four")
    return int(record) * 10


def coordinator() -> Coordinator:
    made = Coordinator(timings=False)
    made.add_step(Step(name="first", job=fail_on_three, precheck=skip_odd))
    made.add_step(Step(name="Second", job=lambda ctx, record: {"seen": record}))
    return made


@pytest.mark.parametrize("value", [0, 1, 3, 4])
def test_every_result_pickles_and_copies_with_the_same_fields(value: int) -> None:
    result = coordinator().run(value, index=7, line=8)
    for twin in (pickle.loads(pickle.dumps(result)), copy.copy(result), copy.deepcopy(result)):
        assert type(twin).__name__ == "Result"
        assert fields(twin) == fields(result)


def test_a_clean_result_stays_clean_through_pickle() -> None:
    result = coordinator().run(0)
    assert result.clean
    assert pickle.loads(pickle.dumps(result)).clean


def test_a_result_with_retries_keeps_its_attempts() -> None:
    calls = []

    def flaky(ctx: Any, record: Any) -> str:
        calls.append(record)
        if len(calls) < 2:
            raise ConnectionError("later")
        return "ok"

    made = Coordinator()
    made.add_step(Step(name="flaky", job=flaky, retry=RetryPolicy(attempts=3)))
    result = made.run(1)
    assert result.attempts == {"flaky": 2}
    assert pickle.loads(pickle.dumps(result)).attempts == {"flaky": 2}
    assert copy.copy(result).attempts == {"flaky": 2}


def test_invalid_and_crashed_are_named_constructors() -> None:
    invalid = Result.invalid(index=2, line=3, exception=ValueError("not JSON"), names=("a", "B"))
    assert (invalid.status, invalid.error.phase if invalid.error else None) == ("invalid", "input")
    assert invalid.steps == {"a": "not_run", "B": "not_run"}
    crashed = Result.crashed(
        index=1, line=None, value={"x": 1}, exception=RuntimeError("bug"), names=("a",)
    )
    assert (crashed.status, crashed.steps) == ("failed", {"a": "failed"})
    assert crashed.input == {"x": 1}


def test_an_invalid_line_from_the_coordinator_is_the_named_constructor() -> None:
    made = coordinator()
    result = made.run(InvalidLine(5, ValueError("bad"), b"{\n"))
    expected = Result.invalid(
        index=0, line=5, exception=ValueError("bad"), names=("first", "Second"), raw=b"{\n"
    )
    assert fields(result) == fields(expected)


def test_a_skipped_pattern_counts_like_a_skipped_record() -> None:
    made = coordinator()
    skipped = made.run(1)
    pattern = Result.skipped_pattern(("first",), names=("first", "Second"))
    assert pattern.steps == skipped.steps
    assert [(e.step, e.phase, e.type) for e in pattern.errors] == [
        (e.step, e.phase, e.type) for e in skipped.errors
    ]


def test_result_takes_keywords_only() -> None:
    with pytest.raises(TypeError):
        Result(0, None, None, "succeeded")  # type: ignore[misc]
