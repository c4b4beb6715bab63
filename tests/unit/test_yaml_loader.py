"""Safe YAML loading: positions, anchors and merge keys, and refusing what is unsafe or absurd."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_cli.pipeline.yaml_loader import Mark, YamlLoadError, load_yaml, read_yaml_file

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
    with pytest.raises(YamlLoadError, match="merge key '<<' needs a mapping") as info:
        load_yaml("a:\n  <<: 3\n")
    assert info.value.mark == Mark(2, 3)


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
        (
            "a: !!python/object/apply:os.system [echo hi]\n",
            "tag '!!python/object/apply:os.system' on a sequence is not supported — "
            "choreo reads plain YAML only and never runs tags",
            Mark(1, 4),
        ),
        (
            "a: !!python/name:os.system x\n",
            "tag '!!python/name:os.system' is not supported — choreo reads plain YAML only "
            "and never runs tags",
            Mark(1, 4),
        ),
        ("a: *nope\n", "alias '*nope' has no anchor '&nope' before it", Mark(1, 4)),
        ("a: &x [*x]\n", "alias '*x' has no anchor '&x' before it", Mark(1, 8)),
        (
            "a: 1\n---\nb: 2\n",
            "a pipeline file holds one YAML document; a second one starts here — "
            "remove it or put it in its own file",
            Mark(2, 1),
        ),
        ("[1]: x\n", "mapping keys must be plain strings", Mark(1, 1)),
        (
            "d: 2024-13-45\n",
            "cannot read '2024-13-45': month must be in 1..12 — quote it",
            Mark(1, 4),
        ),
    ],
)
def test_what_cannot_be_read_says_where(text: str, message: str, mark: Mark) -> None:
    with pytest.raises(YamlLoadError) as info:
        load_yaml(text)
    assert (info.value.message, info.value.mark) == (message, mark)


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


_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
_SCALARS = _SCALARS | st.floats(allow_nan=False, allow_infinity=False)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(_JSON)
def test_loads_json_like_data_as_pyyaml_safe_load_does(value: object) -> None:
    for text in (yaml.safe_dump({"value": value}), yaml.safe_dump(value, default_flow_style=True)):
        assert load_yaml(text).data == yaml.safe_load(text)
