"""`choreo test --update`: only the updated tests' expect:/exit_code: change, byte for byte."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_cli.pipeline.yaml_loader import load_yaml
from choreo_cli.testing.update import TestUpdate, update_expectations

FAILED = [{"status": "failed", "steps": {"greet": "failed"}}]


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def read(text: str) -> Any:
    return load_yaml(text).data


def test_a_block_expect_is_replaced_and_nothing_else_moves() -> None:
    text = dedent(
        """
        # yaml-language-server: $schema=test.schema.json
        version: 1
        pipeline: 'pipeline.yaml'   # odd quoting, a comment
        tests:
        - name: "greets"
          set: {greeting: 'hi'}     # flow mapping, untouched
          input:
              - {name: Ada}
          expect:   # what comes out
          - status: succeeded   # inside the old value: goes with it
            steps: {greet: succeeded}
          exit_code: 0  # the code

        # a comment between tests
        - name: other
          input: [{name: Bob}]
          expect: [{status: succeeded}]
        """
    )
    new = update_expectations(text, {0: TestUpdate(FAILED, 1)})
    assert new == text.replace(
        """\
  - status: succeeded   # inside the old value: goes with it
    steps: {greet: succeeded}
  exit_code: 0  # the code""",
        """\
  - status: failed
    steps:
      greet: failed
  exit_code: 1  # the code""",
    )
    tests = read(new)["tests"]
    assert tests[0]["expect"] == FAILED and tests[0]["exit_code"] == 1
    assert tests[1] == read(text)["tests"][1]


def test_exit_code_none_leaves_it_alone_and_adds_none() -> None:
    text = "tests:\n  - name: a\n    expect: [{status: x}]\n    exit_code: 0 # keep\n"
    new = update_expectations(text, {0: TestUpdate(FAILED, None)})
    assert new.endswith("    exit_code: 0 # keep\n")
    text = "tests:\n  - name: a\n    expect: []\n"
    assert "exit_code" not in update_expectations(text, {0: TestUpdate(FAILED, None)})


def test_an_absent_exit_code_comes_right_after_expect() -> None:
    text = dedent(
        """
        tests:
          - name: a
            expect:
              - status: succeeded
            input: [1]  # records
        """
    )
    new = update_expectations(text, {0: TestUpdate([{"status": "failed"}], 1)})
    assert new == dedent(
        """
        tests:
          - name: a
            expect:
              - status: failed
            exit_code: 1
            input: [1]  # records
        """
    )


def test_a_test_without_expect_gets_one_after_its_input() -> None:
    text = dedent(
        """
        tests:
          - name: new test
            input:
              - {name: Ada}   # one record
            mocks: {greet: {job: {returns: x}}}
          - {name: flow test, input_lines: ['{'], set: {a: 1}}
        """
    )
    updates = {0: TestUpdate(FAILED, 1), 1: TestUpdate([{"status": "invalid"}], 1)}
    new = update_expectations(text, updates)
    assert new == dedent(
        """
        tests:
          - name: new test
            input:
              - {name: Ada}   # one record
            expect:
              - status: failed
                steps:
                  greet: failed
            exit_code: 1
            mocks: {greet: {job: {returns: x}}}
          - {name: flow test, input_lines: ['{'], expect: [{status: invalid}], exit_code: 1, set: {a: 1}}
        """
    )


def test_values_left_out_or_on_the_key_line_become_a_block_below_it() -> None:
    text = dedent(
        """
        tests:
          - name: left out
            expect:
            input: [1]
          - name: a placeholder
            expect: ~   # to fill
          - name: empty flow
            expect: []
        """
    )
    new = update_expectations(text, dict.fromkeys(range(3), TestUpdate(FAILED, None)))
    assert new == dedent(
        """
        tests:
          - name: left out
            expect:
              - status: failed
                steps:
                  greet: failed
            input: [1]
          - name: a placeholder
            expect:   # to fill
              - status: failed
                steps:
                  greet: failed
          - name: empty flow
            expect:
              - status: failed
                steps:
                  greet: failed
        """
    )


def test_a_flow_expect_stays_flow() -> None:
    text = 'tests:\n  - name: a\n    expect: [{status: "succeeded"}]  # flow\n'
    new = update_expectations(text, {0: TestUpdate(FAILED, 1)})
    assert new == (
        "tests:\n  - name: a\n"
        "    expect: [{status: failed, steps: {greet: failed}}]  # flow\n"
        "    exit_code: 1\n"
    )


def test_no_records_is_an_empty_flow_list() -> None:
    text = "tests:\n  - name: a\n    expect:\n      - status: x\n    exit_code: 1\n"
    new = update_expectations(text, {0: TestUpdate([], 0)})
    assert new == "tests:\n  - name: a\n    expect: []\n    exit_code: 0\n"


def test_crlf_line_endings_are_kept() -> None:
    text = dedent(
        """
        version: 1
        tests:
          - name: a   # comment
            input: [1]
          - name: b
            expect:
              - status: succeeded
            exit_code: 0
        """
    )
    updates = {0: TestUpdate(FAILED, 1), 1: TestUpdate(FAILED, 1)}
    expected = update_expectations(text, updates).replace("\n", "\r\n")
    new = update_expectations(text.replace("\n", "\r\n"), updates)
    assert new == expected
    assert "\n" not in new.replace("\r\n", "")
    assert read(new)["tests"][0]["expect"] == FAILED


def test_a_byte_order_mark_and_document_markers_are_kept() -> None:
    text = "\ufeff%YAML 1.2\n---\ntests:\n- name: a\n  expect: []\n...\n"
    new = update_expectations(text, {0: TestUpdate([{"status": "failed"}], None)})
    assert new == "\ufeff%YAML 1.2\n---\ntests:\n- name: a\n  expect:\n    - status: failed\n...\n"


def test_strings_that_would_read_back_as_something_else_are_quoted() -> None:
    tricky: dict[str, Any] = {
        "true": "true",
        "null": None,
        "number": "12",
        "colon": "a: b",
        "hash": "#x",
        "lines": "one\ntwo\r\n",
        "escape": "\x1b[31m",
        "unicode": "é ✓",
        "long": "word " * 200,
        "big": 10**30,
        "float": 1.5,
        "empty": "",
        "<<": "<<",
        "nested": [[], {}, [1, [2]]],
    }
    expect = [{"status": "failed", "data": {"job": tricky}}]
    text = "tests:\n  - name: a\n    input: [1]\n"
    new = update_expectations(text, {0: TestUpdate(expect, 1)})
    assert read(new)["tests"][0]["expect"] == expect
    # Every dumped value sits on one line: the long string is not folded.
    assert max(len(line) for line in new.splitlines()) > 1000


def test_several_tests_at_once_and_an_update_is_idempotent() -> None:
    text = "tests:\n" + "".join(f"  - name: t{i}\n    input: [{i}]\n" for i in range(5))
    updates = {i: TestUpdate([{"status": "failed", "n": i}], 1) for i in (0, 2, 4)}
    new = update_expectations(text, updates)
    tests = read(new)["tests"]
    assert [t.get("expect") for t in tests] == [
        [{"status": "failed", "n": 0}],
        None,
        [{"status": "failed", "n": 2}],
        None,
        [{"status": "failed", "n": 4}],
    ]
    assert "  - name: t1\n    input: [1]\n  - name: t2\n" in new
    assert update_expectations(new, updates) == new
    assert update_expectations(text, {}) is text


@pytest.mark.parametrize(
    ("text", "index", "message"),
    [
        ("version: 1\n", 0, "no 'tests:' list"),
        ("tests: {a: 1}\n", 0, "no 'tests:' list"),
        ("- 1\n", 0, "no 'tests:' list"),
        ("tests:\n  - name: a\n", 1, "there is no test #1"),
        ("tests:\n  - just a string\n", 0, "test #0 in 'tests:' is not a mapping"),
        ("tests: [\n", 0, "not valid YAML"),
        (
            "tests:\n  - name: a\n    expect: &ok [{status: x}]\n  - name: b\n    expect: *ok\n",
            0,
            "defines the anchor &ok",
        ),
    ],
)
def test_text_that_is_not_a_test_file_is_a_value_error(text: str, index: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        update_expectations(text, {index: TestUpdate(FAILED, 0)})


def test_an_alias_as_the_old_value_is_replaced() -> None:
    text = "x: &ok [{status: x}]\ntests:\n  - name: b\n    expect: *ok\n"
    new = update_expectations(text, {0: TestUpdate(FAILED, None)})
    assert new.startswith("x: &ok [{status: x}]\ntests:\n  - name: b\n    expect:\n")
    assert read(new)["tests"][0]["expect"] == FAILED


# -- properties: for any expectations and any of these file shapes ------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
expectations = st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=4), max_size=3)
# How one test can be written: (text, whether expect: and exit_code: are there).
SHAPES = [
    "  - name: block\n    input: [1]  # c\n    expect:\n      - status: x   # c\n    exit_code: 0\n",
    "  - name: indentless\n    expect:\n    - status: x\n      steps: {a: b}\n    input: [1]\n",
    "  - name: none yet\n    input:\n      - 1\n",
    "  - name: left out\n    expect:\n    input: [1]\n",
    "  - name: on the line\n    expect: ~  # c\n",
    "  - name: flow value\n    expect: [{status: x}]\n    exit_code: 1\n",
    "  - {name: flow test, input: [1], expect: [{status: x}]}\n",
    "  - {name: flow, no expect, input: [1]}\n",
    '  - "name": quoted keys\n    "expect": []\n    "exit_code": 2\n',
]


@settings(derandomize=True, database=None, max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.sampled_from(range(len(SHAPES))), min_size=1, max_size=4),
    chosen=st.sets(st.integers(min_value=0, max_value=3)),
    expect=expectations,
    exit_code=st.none() | st.integers(min_value=0, max_value=3),
    crlf=st.booleans(),
)
def test_only_the_updated_tests_change(
    shapes: list[int],
    chosen: set[int],
    expect: list[dict[str, Any]],
    exit_code: int | None,
    crlf: bool,
) -> None:
    newline = "\r\n" if crlf else "\n"
    chunks = [SHAPES[s].replace("\n", newline) for s in shapes]
    head = f"# head{newline}version: 1{newline}tests:{newline}"
    text = head + "".join(chunks)
    updates = {i: TestUpdate(expect, exit_code) for i in chosen if i < len(chunks)}
    new = update_expectations(text, updates)

    before, after = read(text)["tests"], read(new)["tests"]
    assert len(after) == len(before)
    for i, (old, test) in enumerate(zip(before, after, strict=True)):
        if i not in updates:
            assert test == old
            continue
        wanted = {**old, "expect": expect}
        if exit_code is not None:
            wanted["exit_code"] = exit_code
        assert test == wanted
    # Untouched tests, and the text before the first updated one, are the same characters.
    assert new.startswith(head)
    rest = new[len(head) :]
    for i, chunk in enumerate(chunks):
        if i not in updates:
            assert chunk in rest
    if crlf:
        assert "\n" not in new.replace("\r\n", "")
    assert update_expectations(new, updates) == new
