"""The pipeline schema: shipped equal to schemas/, valid 2020-12, documented, and its messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from choreo_cli.pipeline.schema import check_structure, load_schema, quick_valid, read_schema_text
from choreo_cli.pipeline.yaml_loader import YamlLoadError, load_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_the_packaged_schema_equals_the_one_in_schemas() -> None:
    source = (ROOT / "schemas" / "pipeline.schema.json").read_text(encoding="utf-8")
    packaged = (ROOT / "choreo_cli" / "schemas" / "pipeline.schema.json").read_text(
        encoding="utf-8"
    )
    assert packaged == source
    assert read_schema_text() == source


def test_the_schema_is_valid_json_schema_2020_12() -> None:
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def _properties(node: Any, where: str) -> list[tuple[str, Any]]:
    found = []
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            found.append((f"{where}.{name}", sub))
        for key, sub in node.items():
            found.extend(_properties(sub, f"{where}/{key}"))
    elif isinstance(node, list):
        for index, sub in enumerate(node):
            found.extend(_properties(sub, f"{where}[{index}]"))
    return found


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node and ("title" not in node or "description" not in node):
        target = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        return {**target, **node}
    return node


def test_every_property_has_a_title_and_a_description() -> None:
    schema = load_schema()
    properties = _properties(schema, "#")
    assert len(properties) > 25
    for where, node in properties:
        node = _resolve(schema, node)
        assert node.get("title"), f"{where} has no title"
        assert node.get("description"), f"{where} has no description"


def _messages(text: str) -> list[str]:
    return [str(p) for p in check_structure(load_yaml(text), file="p.yaml")]


def test_a_valid_pipeline_has_no_problems() -> None:
    assert _messages("version: 1\nsteps:\n  - {name: a, job: steps:f}\nx-anchors: {}\n") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\nstep: []\n",
            [
                "p.yaml:1:1: the pipeline is missing required key 'steps'",
                "p.yaml:2:1: unknown key 'step' — did you mean 'steps'?",
            ],
        ),
        (
            "steps:\n  - {name: a, job: s:f}\n",
            ["p.yaml:1:1: the pipeline is missing required key 'version' (add 'version: 1')"],
        ),
        (
            "version: 2\nsteps: [{name: a, job: s:f}]\n",
            ["p.yaml:1:10: unsupported version 2 — this choreo reads pipeline files of version 1"],
        ),
        ("version: 1\nsteps: []\n", ["p.yaml:2:8: 'steps' is empty — add at least one step"]),
        (
            "version: 1\nworkers: 0\nsteps: [{name: a, job: s:f}]\n",
            ["p.yaml:2:10: 'workers' must be at least 1, not 0"],
        ),
        (
            "version: 1\nsteps: [{name: a, job: s:f, timeout: 0}]\n",
            ["p.yaml:2:38: 'timeout' must be more than 0, not 0"],
        ),
        (
            "version: 1\npython_path: [1]\nsteps: [{name: a, job: s:f}]\n",
            ["p.yaml:2:15: item 1 of 'python_path' must be a string, not an integer"],
        ),
        (
            "version: 1\nsteps: [{name: a, job: s:f}]\nresources: {db: {factory: s:c, scope: thread}}\n",
            ["p.yaml:3:39: 'scope' must be one of 'pipeline', 'worker', not 'thread'"],
        ),
        (
            "version: 1\nsteps: [{name: a, job: s:f}]\nresources: {db: {factory: s:c, scope: workr}}\n",
            [
                "p.yaml:3:39: 'scope' must be one of 'pipeline', 'worker', not 'workr' — "
                "did you mean 'worker'?"
            ],
        ),
        (
            "version: 1\nsteps: [{name: a, job: s:f}]\nresources: {my-db: {factory: s:c}}\n",
            [
                "p.yaml:3:13: resource name 'my-db' is not a Python identifier — use letters, "
                "digits and _ so that ctx.resources.NAME works"
            ],
        ),
        (
            "version: 1\nsteps: [{name: a, job: {call: s:f, with: 3}}]\n",
            ["p.yaml:2:42: 'with' must be a mapping, not an integer"],
        ),
        (
            "version: 1\nsteps: [{name: a, job: [s:f]}]\n",
            [
                "p.yaml:2:24: 'job' must be a reference like 'module:function' or a mapping "
                "{call: ..., with: ...}, not a list"
            ],
        ),
        (
            "version: 1\nsteps: [{name: a, job: {calls: s:f}}]\n",
            [
                "p.yaml:2:24: 'job' is missing required key 'call' (the callable to run)",
                "p.yaml:2:25: unknown key 'calls' — did you mean 'call'?",
            ],
        ),
        (
            "version: 1\nsteps: [{name: a, job: s:f, retry: {attempts: 2, on: [1]}}]\n",
            ["p.yaml:2:55: item 1 of 'on' must be a string, not an integer"],
        ),
        (
            "version: 1\nsteps: [{name: a, job: s:f}]\nzzz: 1\n",
            [
                "p.yaml:3:1: unknown key 'zzz' — allowed here: version, name, description, "
                "workers, python_path, context, resources, steps, defaults, or x-... for your own anchors"
            ],
        ),
        ("[1, 2]\n", ["p.yaml:1:1: the pipeline file must be a mapping, not a list"]),
    ],
)
def test_messages_say_what_where_and_the_fix(text: str, expected: list[str]) -> None:
    assert _messages(text) == expected


def test_the_sample_pipelines_are_valid_against_the_schema() -> None:
    validator = Draft202012Validator(json.loads(read_schema_text()))
    samples = sorted((ROOT / "sample_pipelines").glob("*/pipeline.yaml"))
    assert samples
    for sample in samples:
        errors = list(validator.iter_errors(load_yaml(sample.read_text()).data))
        assert errors == [], sample


def _case_documents() -> list[Any]:
    documents = []
    for path in sorted((ROOT / "tests" / "cases" / "validate").glob("*/*/pipeline.yaml")):
        try:
            documents.append(load_yaml(path.read_text()).data)
        except YamlLoadError:  # not YAML: nothing to compare
            continue
    return documents


def test_the_quick_check_passes_valid_files_and_never_passes_an_invalid_one() -> None:
    validator = Draft202012Validator(load_schema())
    documents = _case_documents()
    assert len(documents) > 15
    for data in documents:
        valid = not list(validator.iter_errors(data))
        if quick_valid(data):
            assert valid, data
        elif valid:
            pytest.fail(f"the quick check refused a valid document: {data}")


_ANY = st.none() | st.booleans() | st.integers(-2, 3) | st.floats(-1, 2) | st.text(max_size=3)
_ANY = _ANY | st.sampled_from(["steps:f", "a.b", "bad ref", "pipeline", "worker", "x-y", ""])
_VALUES = st.recursive(
    _ANY,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["name", "job", "call", "with", "on", "attempts", "x-a", "zzz", "scope"]
            ),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)
_KEYS = ["version", "name", "workers", "python_path", "context", "resources", "steps", "defaults"]


@settings(derandomize=True, max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=4),
    st.lists(
        st.dictionaries(st.sampled_from(["name", "job", "precheck", "retry", "timeout"]), _VALUES)
    ),
)
def test_the_quick_check_agrees_with_jsonschema(
    changes: list[tuple[str, Any]], steps: list[Any]
) -> None:
    data: dict[str, Any] = {"version": 1, "steps": [{"name": "a", "job": "steps:f"}, *steps]}
    data.update(changes)
    valid = not list(Draft202012Validator(load_schema()).iter_errors(data))
    # Sound: never passes what jsonschema refuses (it may refuse more, e.g. version: 1.0).
    if quick_valid(data):
        assert valid
