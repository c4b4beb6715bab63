"""`${VAR}`, `${VAR:-default}` and the `$${` escape."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_cli.pipeline.interpolate import InterpolationIssue, expand, interpolate

ENV = {"DB": "prod.db", "EMPTY": "", "N": "3"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${DB}", "prod.db"),
        ("path=${DB}!", "path=prod.db!"),
        ("${MISSING:-dev.db}", "dev.db"),
        ("${DB:-dev.db}", "prod.db"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${EMPTY}", ""),
        ("${MISSING:-}", ""),
        ("${MISSING:-a:b-c}", "a:b-c"),
        ("$${DB}", "${DB}"),
        ("$$${DB}", "$${DB}"),  # the leftmost $${ is the escape
        ("cost: $5", "cost: $5"),
        ("${N}${N}", "33"),
        ("no dollar", "no dollar"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, ENV) == (expected, [])


def test_an_unset_variable_without_default_is_an_issue_and_expands_to_nothing() -> None:
    assert expand("x${NOPE}y", ENV) == (
        "xy",
        [
            (
                "unset",
                "environment variable 'NOPE' is not set and has no default — "
                "set it, or write ${NOPE:-default}",
            )
        ],
    )


@pytest.mark.parametrize(("text", "shown"), [("${1X}", "${1X}"), ("${}", "${}"), ("a ${B", "${B")])
def test_a_malformed_reference_is_an_issue_and_left_as_is(text: str, shown: str) -> None:
    result, issues = expand(text, ENV)
    assert result == text
    assert issues == [
        (
            "malformed",
            f"malformed '{shown}' — write ${{NAME}} or ${{NAME:-default}}, or $${{ for a literal ${{",
        )
    ]


def test_interpolate_walks_mappings_and_lists_but_leaves_keys_and_other_values() -> None:
    value = {"${DB}": {"paths": ["${DB}", 3, None, "${NOPE}"]}, "flag": True}
    result, issues = interpolate(value, ENV, path=("context",))
    assert result == {"${DB}": {"paths": ["prod.db", 3, None, ""]}, "flag": True}
    assert [issue.path for issue in issues] == [("context", "${DB}", "paths", 3)]
    assert isinstance(issues[0], InterpolationIssue)
    assert issues[0].kind == "unset"
    assert value["${DB}"] == {"paths": ["${DB}", 3, None, "${NOPE}"]}  # not changed in place


@settings(derandomize=True, max_examples=300)
@given(st.text().filter(lambda t: "${" not in t))
def test_text_without_a_reference_is_unchanged(text: str) -> None:
    assert expand(text, ENV) == (text, [])


@settings(derandomize=True, max_examples=300)
@given(st.text(alphabet=st.characters(blacklist_characters="$}")))
def test_the_escape_writes_any_text_literally(text: str) -> None:
    assert expand("$${" + text + "}", ENV) == ("${" + text + "}", [])


@settings(derandomize=True, max_examples=300)
@given(st.text(alphabet=st.characters(blacklist_characters="$}")))
def test_a_default_is_used_verbatim(default: str) -> None:
    assert expand("${CHOREO_SURELY_UNSET:-" + default + "}", {}) == (default, [])
