"""choreo test's matching: mappings as a subset, lists exactly, JSON equality of scalars;
and what --update writes for a record."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_cli.testing.matching import MISSING, Difference, compare, path_text, same_scalar
from choreo_cli.testing.outcomes import TestOutcome

RESULT = {
    "index": 0,
    "line": 1,
    "status": "succeeded",
    "error": None,
    "errors": [{"step": "create", "phase": "precheck", "type": "Skip", "message": "exists"}],
    "steps": {"create": "skipped", "label": "succeeded"},
    "data": {"precheck": {"create": 1}, "job": {"label": "P-1"}},
}


@pytest.mark.parametrize(
    ("expected", "differences"),
    [
        ({}, []),
        ({"status": "succeeded", "steps": {"label": "succeeded"}}, []),
        ({"data": {"job": {}}}, []),
        ({"errors": [{"type": "Skip"}]}, []),
        ({"error": None, "line": 1.0}, []),
        (
            {"status": "failed"},
            [Difference(("status",), "failed", "succeeded")],
        ),
        (
            {"steps": {"create": "succeeded", "other": "skipped"}},
            [
                Difference(("steps", "create"), "succeeded", "skipped"),
                Difference(("steps", "other"), "skipped", MISSING),
            ],
        ),
        # A list must have exactly the entries given, each a subset.
        ({"errors": []}, [Difference(("errors",), [], RESULT["errors"])]),
        (
            {"errors": [{"type": "Skip"}, {"type": "Skip"}]},
            [Difference(("errors",), [{"type": "Skip"}, {"type": "Skip"}], RESULT["errors"])],
        ),
        (
            {"errors": [{"type": "Cancel"}]},
            [Difference(("errors", 0, "type"), "Cancel", "Skip")],
        ),
        # A mapping expected where the result has a scalar, and the other way round.
        ({"status": {"x": 1}}, [Difference(("status",), {"x": 1}, "succeeded")]),
        ({"steps": "skipped"}, [Difference(("steps",), "skipped", RESULT["steps"])]),
        # true is not 1, null is not "".
        ({"data": {"precheck": {"create": True}}}, [
            Difference(("data", "precheck", "create"), True, 1)
        ]),
        ({"error": ""}, [Difference(("error",), "", None)]),
    ],
)  # fmt: skip
def test_compare(expected: dict[str, Any], differences: list[Difference]) -> None:
    assert compare(expected, RESULT) == differences


def test_same_scalar() -> None:
    assert same_scalar(1, 1.0) and same_scalar("a", "a") and same_scalar(None, None)
    assert not same_scalar(True, 1) and not same_scalar(0, False) and not same_scalar(None, 0)
    assert not same_scalar([], []) and not same_scalar(2**70, 2**70 + 1)


def test_path_text() -> None:
    assert path_text(("steps", "create statement")) == "steps.create statement"
    assert path_text(("errors", 1, "message")) == "errors[1].message"
    assert path_text(("errors",)) == "errors"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(derandomize=True, max_examples=60)
@given(JSON)
def test_a_value_matches_itself(value: Any) -> None:
    assert compare(value, value) == []


@settings(derandomize=True, max_examples=60)
@given(st.dictionaries(st.text(max_size=3), JSON, max_size=4), st.data())
def test_any_sub_mapping_matches_and_a_changed_value_does_not(
    actual: dict[str, Any], data: st.DataObject
) -> None:
    keys = data.draw(
        st.lists(st.sampled_from(sorted(actual)), unique=True) if actual else st.just([])
    )
    subset = {key: actual[key] for key in keys}
    assert compare(subset, actual) == []
    if keys:
        changed = {**subset, keys[0]: ["not", "the", "value", actual[keys[0]]]}
        assert [d.path for d in compare(changed, actual)] == [(keys[0],)]


def test_update_writes_status_steps_and_what_is_not_empty() -> None:
    clean = {**RESULT, "errors": [], "data": {"precheck": {}, "job": {"label": "P-1"}}}
    retried = {**RESULT, "attempts": {"label": 2}}
    outcome = TestOutcome(0, "t", 1, 1, (), (clean, retried), 0, 0.0)
    assert outcome.expectations() == [
        {
            "status": "succeeded",
            "steps": {"create": "skipped", "label": "succeeded"},
            "data": {"job": {"label": "P-1"}},
        },
        {
            "status": "succeeded",
            "steps": {"create": "skipped", "label": "succeeded"},
            "errors": RESULT["errors"],
            "attempts": {"label": 2},
            "data": RESULT["data"],
        },
    ]
