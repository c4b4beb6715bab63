"""The schemas: shipped equal to schemas/, valid 2020-12 in ajv's strict mode, documented;
and the pipeline schema's messages."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from choreo_cli.pipeline.schema import (
    SCHEMA_NAMES,
    check_structure,
    load_schema,
    quick_valid,
    read_schema_text,
)
from choreo_cli.pipeline.yaml_loader import YamlLoadError, load_yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILES = sorted((ROOT / "schemas").glob("*.schema.json"))


def _schemas() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in SCHEMA_FILES]


def test_the_packaged_schemas_equal_the_ones_in_schemas() -> None:
    packaged = sorted((ROOT / "choreo_cli" / "schemas").glob("*.schema.json"))
    assert [p.name for p in packaged] == [p.name for p in SCHEMA_FILES]
    assert [f"{name}.schema.json" for name in SCHEMA_NAMES] == [p.name for p in SCHEMA_FILES]
    for name, source, copy in zip(SCHEMA_NAMES, SCHEMA_FILES, packaged, strict=True):
        text = source.read_text(encoding="utf-8")
        assert copy.read_text(encoding="utf-8") == text, copy.name
        assert read_schema_text(name) == text
    assert read_schema_text() == (ROOT / "schemas" / "pipeline.schema.json").read_text("utf-8")


@pytest.mark.parametrize(("name", "schema"), _schemas())
def test_each_schema_is_valid_json_schema_2020_12(name: str, schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
    Draft202012Validator.check_schema(schema)


def test_the_summary_schema_is_among_those_checked_and_fits_a_library_summary() -> None:
    from choreo_cli.core.summary import RunSummary

    assert ROOT / "schemas" / "summary.schema.json" in SCHEMA_FILES
    # Used as a library, nothing records the run's files: those fields are null.
    summary = RunSummary(["a"])
    summary.finish()
    Draft202012Validator(json.loads(read_schema_text("summary"))).validate(summary.to_json())


# -- ajv's strict mode, read in Python: what CI without npm still checks -------------------

# Keywords that only apply to one kind of value: ajv's strictTypes wants the matching
# `type` beside them (or on a schema applied in place to the same value).
_TYPED_KEYWORDS = {
    "object": {
        "properties", "patternProperties", "additionalProperties", "required",
        "propertyNames", "minProperties", "maxProperties", "dependentRequired",
        "dependentSchemas", "unevaluatedProperties",
    },
    "array": {
        "items", "prefixItems", "contains", "minContains", "maxContains", "minItems",
        "maxItems", "uniqueItems", "unevaluatedItems",
    },
    "string": {"minLength", "maxLength", "pattern", "format", "contentEncoding",
               "contentMediaType", "contentSchema"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
}  # fmt: skip
_KNOWN_KEYWORDS = set().union(*_TYPED_KEYWORDS.values()) | {
    "$schema", "$id", "$ref", "$defs", "$comment", "$anchor", "$dynamicRef", "$dynamicAnchor",
    "$vocabulary", "title", "description", "default", "examples", "deprecated", "readOnly",
    "writeOnly", "type", "enum", "const", "allOf", "anyOf", "oneOf", "not", "if", "then", "else",
}  # fmt: skip
_IN_PLACE = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_SCHEMA_VALUES = (
    "additionalProperties", "items", "contains", "propertyNames", "unevaluatedProperties",
    "unevaluatedItems", "contentSchema",
)  # fmt: skip


def strict_mode_problems(
    schema: Any, where: str = "#", types: frozenset[str] = frozenset()
) -> list[str]:
    """What ajv's strict mode (strictTypes, strictRequired, unknown keywords) refuses in
    ``schema``; ``types`` are those declared on schemas applied in place to the same value."""
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, dict):
        return [f"{where}: a schema must be an object or a boolean"]
    problems = []
    declared = schema.get("type")
    if isinstance(declared, list):
        problems.append(f"{where}: union type {declared} — use anyOf of typed schemas")
        declared = None
    if declared is not None:
        types = frozenset({declared, "number"} if declared == "integer" else {declared})
    for keyword in schema:
        if keyword not in _KNOWN_KEYWORDS:
            problems.append(f"{where}: unknown keyword {keyword!r}")
    for kind, keywords in _TYPED_KEYWORDS.items():
        for keyword in sorted(keywords.intersection(schema)):
            if kind not in types:
                problems.append(f'{where}: {keyword!r} without "type": "{kind}"')
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in properties:
            problems.append(f"{where}: required property {name!r} is not in properties")
    for keyword in _IN_PLACE:
        subs = schema.get(keyword)
        for index, sub in enumerate(
            subs if isinstance(subs, list) else [subs] if subs is not None else []
        ):
            path = f"{where}/{keyword}" + (f"/{index}" if isinstance(subs, list) else "")
            problems.extend(strict_mode_problems(sub, path, types))
    for keyword in _SCHEMA_MAPS:
        for name, sub in schema.get(keyword, {}).items():
            problems.extend(strict_mode_problems(sub, f"{where}/{keyword}/{name}"))
    for keyword in _SCHEMA_VALUES:
        if keyword in schema:
            problems.extend(strict_mode_problems(schema[keyword], f"{where}/{keyword}"))
    for index, sub in enumerate(schema.get("prefixItems", [])):
        problems.extend(strict_mode_problems(sub, f"{where}/prefixItems/{index}"))
    return problems


@pytest.mark.parametrize(("name", "schema"), _schemas())
def test_each_schema_keeps_the_strict_mode_rules(name: str, schema: dict[str, Any]) -> None:
    assert strict_mode_problems(schema) == [], name


def test_the_strict_mode_reading_finds_what_ajv_refuses() -> None:
    schema = {
        "type": "object",
        "required": ["a", "b"],
        "properties": {
            "a": {"type": ["string", "object"]},
            "c": {"properties": {}, "minLength": 1},
            "d": {"type": "integer", "minimum": 0, "anyOf": [{"maximum": 9}]},
            "e": {"if": {"type": "string"}, "then": {"pattern": "x"}, "else": {"required": []}},
            "f": {"nullable": True},
        },
    }
    assert strict_mode_problems(schema) == [
        "#: required property 'b' is not in properties",
        "#/properties/a: union type ['string', 'object'] — use anyOf of typed schemas",
        '#/properties/c: \'properties\' without "type": "object"',
        '#/properties/c: \'minLength\' without "type": "string"',
        '#/properties/e/then: \'pattern\' without "type": "string"',
        '#/properties/e/else: \'required\' without "type": "object"',
        "#/properties/f: unknown keyword 'nullable'",
    ]


# -- ajv itself, when npm can install it -------------------------------------------------

AJV_PACKAGES = ("ajv-cli@5", "ajv-formats@3")


@pytest.fixture(scope="session")
def ajv() -> Iterator[Path]:
    """The ajv command line, installed once by npm into a folder in the temp dir (kept for
    later runs); skips when npm is missing or cannot install it (offline)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip(
            "npm and node are not installed: ajv's strict mode is not run (the Python reading of it is)"
        )
    cache = Path(tempfile.gettempdir()) / "choreo-test-ajv-5"
    command = cache / "node_modules" / ".bin" / "ajv"
    if not command.exists():
        staging = Path(tempfile.mkdtemp(prefix="choreo-test-ajv-"))
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund",
                 "--no-update-notifier", "--loglevel=error", *AJV_PACKAGES],
                capture_output=True, text=True, timeout=180, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            shutil.rmtree(staging, ignore_errors=True)
            pytest.skip("npm install ajv-cli timed out (offline?)")
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"npm could not install ajv-cli (offline?): {last}")
        # Another test run may have put it there meanwhile: then theirs is used.
        with contextlib.suppress(OSError):
            os.rename(staging, cache)
        shutil.rmtree(staging, ignore_errors=True)
    yield command


def test_every_schema_compiles_in_ajv_strict_mode(ajv: Path) -> None:
    args = [arg for path in SCHEMA_FILES for arg in ("-s", str(path))]
    done = subprocess.run(
        [str(ajv), "compile", "--spec=draft2020", "--strict=true", "-c", "ajv-formats", *args],
        capture_output=True, text=True, timeout=120, check=False,
        cwd=ajv.parents[2],  # where ajv-formats is installed
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for path in SCHEMA_FILES:
        assert f"schema {path} is valid" in output


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


@pytest.mark.parametrize(("name", "schema"), _schemas())
def test_every_property_has_a_title_and_a_description(name: str, schema: dict[str, Any]) -> None:
    properties = _properties(schema, name)
    assert len(properties) > 10
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
                "workers, max_workers, precheck_errors, halt, python_path, context, resources, "
                "limits, steps, defaults, or x-... for your own anchors"
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


@settings(derandomize=True, max_examples=200, deadline=None)
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


# Values YAML 1.1 read otherwise. check-jsonschema reads files with ruamel.yaml, which keeps
# a few YAML 1.1 readings in its 1.2 mode (1_000 and 0b11 are integers, a lone = does not
# parse): those are left out, choreo follows the YAML 1.2 core schema there.
_YAML_1_1_READINGS = [
    "name: no",
    "name: yes",
    "name: on",
    "name: off",
    "name: 2024-01-01",
    "description: 2001-12-14 21:59:43.10 -5",
    "workers: 1:30",
    "workers: 0x10",
    "workers: 0o10",
    "workers: 010",
    "workers: +3",
    "name: ~",
    "name: Null",
    "name: nULL",
    "name: TRUE",
    "name: tRUE",
    "defaults: {timeout: 1e3}",
    "defaults: {timeout: .inf}",
    "defaults: {timeout: .5}",
    "defaults: {timeout: 1.}",
]


def test_choreo_and_check_jsonschema_read_the_file_alike(tmp_path: Path) -> None:
    """The schema and `choreo validate` agree on YAML scalars, as editors and CI read them."""
    command = Path(sys.executable).parent / "check-jsonschema"
    if not command.exists():
        pytest.skip("check-jsonschema is not installed")
    files = []
    for index, line in enumerate(_YAML_1_1_READINGS):
        path = tmp_path / f"f{index:02}.yaml"
        path.write_text(f"version: 1\n{line}\nsteps: [{{name: a, job: s:f}}]\n")
        files.append(path)
    done = subprocess.run(
        [str(command), "--schemafile", str(ROOT / "schemas" / "pipeline.schema.json"),
         "-o", "json", *map(str, files)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["parse_errors"] == []
    theirs = sorted({Path(error["filename"]).name for error in report["errors"]})
    ours = sorted(p.name for p in files if check_structure(load_yaml(p.read_text()), file=""))
    assert ours == theirs == ["f06.yaml", "f11.yaml", "f12.yaml", "f14.yaml"]
