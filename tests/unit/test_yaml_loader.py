"""Safe YAML 1.2 loading: positions, anchors and merge keys, core-schema scalars, and
refusing what is unsafe or absurd."""

from __future__ import annotations

import json
import math
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from choreo_cli.pipeline.yaml_loader import (
    Mark,
    YamlLoadError,
    load_yaml,
    read_yaml_file,
    scalar_value,
)

TEXT = """\
version: 1
steps:
  - name: a
    job: {call: steps:f, with: {limit: 3}}
"""


def test_values_keep_their_line_and_column() -> None:
    doc = load_yaml(TEXT)
    assert doc.data == {
        "version": 1,
        "steps": [{"name": "a", "job": {"call": "steps:f", "with": {"limit": 3}}}],
    }
    assert doc.value_mark(("version",)) == Mark(1, 10)
    assert doc.key_mark(("steps",)) == Mark(2, 1)
    assert doc.value_mark(("steps", 0)) == Mark(3, 5)
    assert doc.value_mark(("steps", 0, "name")) == Mark(3, 11)
    assert doc.value_mark(("steps", 0, "job", "call")) == Mark(4, 17)
    assert doc.key_mark(("steps", 0, "job", "with", "limit")) == Mark(4, 33)


def test_an_unknown_path_falls_back_to_its_deepest_known_parent() -> None:
    doc = load_yaml(TEXT)
    assert doc.value_mark(("steps", 0, "precheck")) == Mark(3, 5)
    assert doc.key_mark(("steps", 7)) == Mark(3, 3)


def test_anchors_aliases_and_merge_keys_work_as_yaml_defines_them() -> None:
    doc = load_yaml(
        """\
base: &base {timeout: 5, retry: {attempts: 2}}
more: &more {timeout: 9, description: more}
one:
  <<: *base
  timeout: 1
two:
  <<: [*more, *base]
three: *base
"""
    )
    assert doc.data["one"] == {"timeout": 1, "retry": {"attempts": 2}}
    assert doc.data["two"] == {"timeout": 9, "description": "more", "retry": {"attempts": 2}}
    assert doc.data["three"] == {"timeout": 5, "retry": {"attempts": 2}}
    # A merged key points where it was written: at the anchor.
    assert doc.key_mark(("one", "retry")) == Mark(1, 26)
    assert doc.key_mark(("one", "timeout")) == Mark(5, 3)


def test_a_merge_key_needs_mappings() -> None:
    doc = load_yaml("a:\n  <<: 3\n  b: 1\n")
    assert doc.data == {"a": {"b": 1}}
    assert doc.issues == [
        (
            Mark(2, 3),
            "a merge key '<<' needs a mapping or a list of mappings (e.g. '<<: *defaults')",
        )
    ]


def test_keys_are_strings_as_in_json() -> None:
    assert load_yaml("on: [x]\n1: one\nyes: y\n").data == {"on": ["x"], "1": "one", "yes": "y"}


def test_a_quoted_merge_key_is_an_ordinary_key() -> None:
    assert load_yaml("'<<': 1\n").data == {"<<": 1}


def test_duplicate_keys_are_reported() -> None:
    doc = load_yaml("a: 1\nb: 2\na: 3\n")
    assert doc.data == {"a": 3, "b": 2}
    assert doc.issues == [
        (Mark(3, 1), "duplicate key 'a' (first at line 1) — write each key once in a mapping")
    ]


def test_an_empty_document_is_none() -> None:
    assert load_yaml("# nothing\n").data is None


@pytest.mark.parametrize(
    ("text", "message", "mark"),
    [
        (
            "a: [1\nb: 2\n",
            "YAML syntax error: while parsing a flow sequence: did not find expected ',' or ']'",
            Mark(2, 2),
        ),
    ],
)
def test_what_cannot_be_read_says_where(text: str, message: str, mark: Mark) -> None:
    with pytest.raises(YamlLoadError) as info:
        load_yaml(text)
    assert (info.value.message, info.value.mark) == (message, mark)


_UNSUPPORTED = "is not supported — choreo reads plain YAML only and never runs tags"


@pytest.mark.parametrize(
    ("text", "data", "issue"),
    [
        (
            "a: !!python/object/apply:os.system [echo hi]\n",
            {"a": ["echo hi"]},
            (Mark(1, 4), f"tag '!!python/object/apply:os.system' on a sequence {_UNSUPPORTED}"),
        ),
        (
            "a: !!python/object:os.Thing {b: 1}\n",
            {"a": {"b": 1}},
            (Mark(1, 4), f"tag '!!python/object:os.Thing' on a mapping {_UNSUPPORTED}"),
        ),
        (
            "a: !!python/name:os.system 3\n",
            {"a": 3},
            (Mark(1, 4), f"tag '!!python/name:os.system' {_UNSUPPORTED}"),
        ),
        ("a: !custom 'no'\n", {"a": "no"}, (Mark(1, 4), f"tag '!custom' {_UNSUPPORTED}")),
        (
            "a: !!timestamp 2024-01-01\n",
            {"a": "2024-01-01"},
            (Mark(1, 4), f"tag '!!timestamp' {_UNSUPPORTED}"),
        ),
        (
            "a: !!set {x}\n",
            {"a": {"x": None}},
            (Mark(1, 4), f"tag '!!set' on a mapping {_UNSUPPORTED}"),
        ),
        (
            "!!python/name:os.system a: 1\n",
            {"a": 1},
            (Mark(1, 1), f"tag '!!python/name:os.system' {_UNSUPPORTED}"),
        ),
        (
            "a: !!int 1_000\n",
            {"a": "1_000"},
            (
                Mark(1, 4),
                "cannot read '1_000' as '!!int': not an integer in YAML 1.2 (decimal, 0o octal "
                "or 0x hex digits) — fix the value or remove the tag",
            ),
        ),
        (
            "a: !!bool yes\n",
            {"a": "yes"},
            (
                Mark(1, 4),
                "cannot read 'yes' as '!!bool': not a boolean in YAML 1.2 (write true or false) "
                "— fix the value or remove the tag",
            ),
        ),
        (
            "a: 1\n---\nb: 2\n",
            {"a": 1},
            (
                Mark(2, 1),
                "a pipeline file holds one YAML document; a second one starts here — "
                "remove it or put it in its own file",
            ),
        ),
        ("a: *nope\n", {"a": None}, (Mark(1, 4), "alias '*nope' has no anchor '&nope' before it")),
        ("a: &x [*x]\n", {"a": [None]}, (Mark(1, 8), "alias '*x' has no anchor '&x' before it")),
        ("[1]: x\nb: 2\n", {"b": 2}, (Mark(1, 1), "mapping keys must be plain strings")),
    ],
)
def test_a_problem_that_does_not_stop_reading_is_an_issue(
    text: str, data: Any, issue: tuple[Mark, str]
) -> None:
    """The rest of the document is read (a tagged value as if untagged), so a file's
    other problems can be reported too."""
    doc = load_yaml(text)
    assert (doc.data, doc.issues) == (data, [issue])


def test_every_tag_is_an_issue_and_the_rest_is_read() -> None:
    doc = load_yaml("a: !!python/object/apply:os.system [x]\nb: !x y\nc: [1, *nope]\nd: ok\n")
    assert [mark for mark, _ in doc.issues] == [Mark(1, 4), Mark(2, 4), Mark(3, 8)]
    assert doc.data == {"a": ["x"], "b": "y", "c": [1, None], "d": "ok"}


def test_the_standard_tags_of_the_core_schema_are_read() -> None:
    doc = load_yaml("a: !!str 3\nb: !!int '0x1f'\nc: !!float 3\nd: !!bool 'true'\ne: !!null ''\n")
    assert doc.issues == []
    assert doc.data == {"a": "3", "b": 31, "c": 3.0, "d": True, "e": None}
    assert type(doc.data["c"]) is float


# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1023-core-schema), as editors,
# yaml-language-server and check-jsonschema read it; YAML 1.1 read many of these otherwise.
CORE_SCALARS: list[tuple[str, Any]] = [
    ("yes", "yes"),
    ("no", "no"),
    ("Yes", "Yes"),
    ("NO", "NO"),
    ("on", "on"),
    ("off", "off"),
    ("y", "y"),
    ("n", "n"),
    ("true", True),
    ("True", True),
    ("TRUE", True),
    ("false", False),
    ("False", False),
    ("FALSE", False),
    ("tRue", "tRue"),
    ("~", None),
    ("null", None),
    ("Null", None),
    ("NULL", None),
    ("", None),
    ("nULL", "nULL"),
    ("1:30", "1:30"),
    ("190:20:30", "190:20:30"),
    ("2024-01-01", "2024-01-01"),
    ("2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00"),
    ("2024-13-45", "2024-13-45"),
    ("0", 0),
    ("-17", -17),
    ("+17", 17),
    ("017", 17),
    ("0o17", 15),
    ("0x1f", 31),
    ("0x1F", 31),
    ("-0x1f", "-0x1f"),
    ("0b101", "0b101"),
    ("1_000", "1_000"),
    ("12345678901234567890123", 12345678901234567890123),
    ("1.5", 1.5),
    ("-1.5", -1.5),
    (".5", 0.5),
    ("1.", 1.0),
    ("1e3", 1000.0),
    ("1E3", 1000.0),
    ("-1.5e-3", -0.0015),
    ("1_000.5", "1_000.5"),
    ("1:30.5", "1:30.5"),
    (".inf", math.inf),
    ("+.Inf", math.inf),
    ("-.INF", -math.inf),
    ("=", "="),
    ("<<", "<<"),
    (".", "."),
    ("x1", "x1"),
]


@pytest.mark.parametrize(
    ("text", "expected"), CORE_SCALARS, ids=[t or "empty" for t, _ in CORE_SCALARS]
)
def test_plain_scalars_are_read_as_yaml_1_2_core_schema(text: str, expected: Any) -> None:
    doc = load_yaml(f"a: {text}\n")
    assert doc.issues == []
    value = doc.data["a"]
    assert (type(value), value) == (type(expected), expected)
    assert scalar_value(text) == expected and type(scalar_value(text)) is type(expected)


@pytest.mark.parametrize("text", [".nan", ".NaN", ".NAN"])
def test_nan(text: str) -> None:
    assert math.isnan(load_yaml(f"a: {text}\n").data["a"])
    assert math.isnan(scalar_value(text))


def test_quoted_scalars_are_strings() -> None:
    assert load_yaml("a: ['1', \"true\", '~', '']\n").data == {"a": ["1", "true", "~", ""]}


def test_an_integer_too_long_for_python_is_an_issue_not_a_crash() -> None:
    digits = "9" * 5000
    doc = load_yaml(f"a: {digits}\n")
    assert doc.data == {"a": digits}
    assert len(doc.issues) == 1 and doc.issues[0][1].startswith("cannot read '9999")
    assert scalar_value(digits) == digits


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels):
        aliases = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{aliases}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_quickly_with_bounded_memory() -> None:
    text = _bomb(10)  # about 3.9e9 values once expanded
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(YamlLoadError) as info:
        load_yaml(text)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.message == (
        "aliases expand to more than 200000 values — refused "
        "(an alias bomb, or far too much data for a pipeline file)"
    )
    assert info.value.mark == Mark(6, 15)
    assert elapsed < 1.0
    assert peak < 5 * 1024 * 1024


def test_a_document_with_too_many_values_is_refused() -> None:
    with pytest.raises(YamlLoadError, match="the document holds to more than 10 values"):
        load_yaml("[" + ", ".join("x" * 20) + "]", max_nodes=10)


def test_nesting_too_deep_is_refused() -> None:
    with pytest.raises(YamlLoadError, match="nested more than 200 deep"):
        load_yaml("[" * 300 + "]" * 300)


def test_a_file_too_large_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 100 + "\n")
    with pytest.raises(YamlLoadError, match="file is larger than 0 MiB — refused"):
        read_yaml_file(path, max_bytes=50)


def test_a_file_that_is_not_utf8_says_where(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(YamlLoadError) as info:
        read_yaml_file(path)
    assert info.value.message == "file is not valid UTF-8 (byte 0xe9) — save it as UTF-8"
    assert info.value.mark == Mark(2, 7)


def test_a_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert read_yaml_file(path).data == {"a": 1}


# Characters libyaml reads as themselves in a quoted scalar (json.dumps escapes those below
# 0x20; NEL and the Unicode line and paragraph separators are line breaks to it).
_CHARACTERS = st.characters(exclude_categories=("Cs",)).filter(
    lambda c: (
        (c < "\x7f" or "\xa0" <= c <= "\ufffd" or c >= "\U00010000") and c not in "\u2028\u2029"
    )
)
_TEXT = st.text(_CHARACTERS, max_size=20)
_SCALARS = st.none() | st.booleans() | st.integers() | _TEXT
_SCALARS = _SCALARS | st.floats(allow_nan=False, allow_infinity=False)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(_CHARACTERS, max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 and 1.0 and True differ)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@settings(derandomize=True, max_examples=300, deadline=None)
@given(_JSON)
@example([1e20, 1e-05, -2.5e-300, 0.5, 10**30, "no", "1:30", "2024-01-01"])
def test_json_text_is_read_as_the_json_value(value: Any) -> None:
    """YAML 1.2 is a superset of JSON: JSON text reads as the same value, types included
    (YAML 1.1 read 1e+20 as a string)."""
    for text in (
        json.dumps(value, ensure_ascii=False),
        json.dumps({"value": value}, ensure_ascii=False, indent=2),
    ):
        assert _same(load_yaml(text).data, json.loads(text)), text
