"""The packaged JSON Schemas (pipeline file, result line, run summary, test file), and
schema errors of a pipeline or test file turned into positioned problems."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from choreo_cli.errors import did_you_mean
from choreo_cli.pipeline.problems import Problem

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

    from choreo_cli.pipeline.yaml_loader import YamlDocument, YamlPath

# The schemas shipped in choreo_cli/schemas/, each a copy of schemas/NAME.schema.json.
SchemaName = Literal["pipeline", "result", "summary", "test"]
SCHEMA_NAMES: tuple[SchemaName, ...] = ("pipeline", "result", "summary", "test")
# The schemas of the files choreo reads (check_structure), and what messages call them.
FileSchema = Literal["pipeline", "test"]
_FILE_NOUNS: dict[str, str] = {"pipeline": "pipeline", "test": "test"}

_TYPE_NAMES = {
    "string": "a string",
    "object": "a mapping",
    "array": "a list",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}
_REFERENCE_HINT = "write 'module:function', 'module.function' or an entry-point name"


def read_schema_text(name: SchemaName = "pipeline") -> str:
    """A schema (the pipeline file's by default) exactly as shipped inside the package.

    >>> '"$schema"' in read_schema_text()
    True
    >>> '"choreo result line"' in read_schema_text("result")
    True
    """
    resource = f"schemas/{name}.schema.json"
    return resources.files("choreo_cli").joinpath(resource).read_text(encoding="utf-8")


@lru_cache(maxsize=4)
def load_schema(name: FileSchema = "pipeline") -> dict[str, Any]:
    """A file schema (the pipeline's by default) as a dict (parsed once)."""
    schema: dict[str, Any] = json.loads(read_schema_text(name))
    return schema


@lru_cache(maxsize=4)
def _validator(name: FileSchema) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema(name))


def check_structure(
    document: YamlDocument, *, file: str, schema: FileSchema = "pipeline"
) -> list[Problem]:
    """Validate loaded YAML against the schema; one problem per thing wrong, in file order.

    >>> from choreo_cli.pipeline.yaml_loader import load_yaml
    >>> [p.message for p in check_structure(load_yaml("version: 1\\nsteps: []"), file="p.yaml")]
    ["'steps' is empty — add at least one step"]
    """
    if quick_valid(document.data, schema):
        return []
    problems: list[Problem] = []
    for error in _validator(schema).iter_errors(document.data):
        for key_path, message, at_key in _describe_error(error, document.data, schema):
            mark = document.key_mark(key_path) if at_key else document.value_mark(key_path)
            problems.append(Problem(file, mark.line, mark.column, message))
    unique = dict.fromkeys(problems)
    return sorted(unique, key=lambda p: (p.line, p.column))


def quick_valid(instance: Any, name: FileSchema = "pipeline") -> bool:
    """True when ``instance`` surely fits the schema (the pipeline's by default), without
    importing jsonschema.

    A small, conservative reading of the keywords the pipeline schema uses: any doubt
    (another keyword, a number type jsonschema might read differently) answers False,
    and jsonschema then decides and explains. It saves jsonschema's import on valid files.
    """
    schema = load_schema(name)
    return _fits(instance, schema, schema)


_OBJECT_KEYWORDS = frozenset({"properties", "patternProperties", "additionalProperties"})
_ANNOTATIONS = frozenset({"$schema", "title", "description", "examples", "default"})
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "object": (dict,),
    "array": (list,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return name == "boolean"
    if name == "null":
        return value is None
    return isinstance(value, _JSON_TYPES.get(name, ()))


def _fits(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> bool:
    for keyword, rule in schema.items():
        if keyword in _ANNOTATIONS or keyword in ("$defs", "then", "else"):
            continue
        if keyword == "$ref":
            if not rule.startswith("#/$defs/"):
                return False
            if not _fits(value, root["$defs"][rule[len("#/$defs/") :]], root):
                return False
        elif keyword == "type":
            names = [rule] if isinstance(rule, str) else rule
            if not any(_is_type(value, name) for name in names):
                return False
        elif keyword == "if":
            branch = schema.get("then") if _fits(value, rule, root) else schema.get("else")
            if branch is not None and not _fits(value, branch, root):
                return False
        elif keyword in ("const", "enum"):
            allowed = [rule] if keyword == "const" else rule
            if not any(type(value) is type(a) and value == a for a in allowed):
                return False
        elif keyword == "pattern":
            if isinstance(value, str) and re.search(rule, value) is None:
                return False
        elif keyword in ("minimum", "exclusiveMinimum"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if value < rule or (keyword == "exclusiveMinimum" and value == rule):
                return False
        elif keyword in ("minItems", "minLength"):
            if isinstance(value, (list, str)) and len(value) < rule:
                return False
        elif keyword == "maxProperties":
            if isinstance(value, dict) and len(value) > rule:
                return False
        elif keyword == "items":
            if isinstance(value, list) and not all(_fits(item, rule, root) for item in value):
                return False
        elif keyword == "required":
            if isinstance(value, dict) and any(key not in value for key in rule):
                return False
        elif keyword == "propertyNames":
            if isinstance(value, dict) and not all(_fits(key, rule, root) for key in value):
                return False
        elif keyword in _OBJECT_KEYWORDS:
            continue  # checked together, once, below
        else:
            return False  # a keyword this reading does not know: let jsonschema decide
    if isinstance(value, dict) and not _OBJECT_KEYWORDS.isdisjoint(schema):
        return _object_fits(value, schema, root)
    return True


def _object_fits(value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any]) -> bool:
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        matched = False
        if key in properties:
            matched = True
            if not _fits(item, properties[key], root):
                return False
        for pattern, sub in patterns.items():
            if re.search(pattern, key):
                matched = True
                if not _fits(item, sub, root):
                    return False
        if not matched and (
            extra is False or (isinstance(extra, dict) and not _fits(item, extra, root))
        ):
            return False
    return True


def kind_of(value: Any) -> str:
    """How a value's type is named in messages: 'a string', 'a mapping', 'a list'..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    for python_type, name in (
        (str, "a string"),
        (dict, "a mapping"),
        (list, "a list"),
        (int, "an integer"),
        (float, "a number"),
    ):
        if isinstance(value, python_type):
            return name
    return f"a {type(value).__name__}"


def _subject(path: YamlPath, kind: FileSchema = "pipeline") -> str:
    if not path:
        return f"the {_FILE_NOUNS[kind]} file"
    last = path[-1]
    if isinstance(last, int):
        parent = next((p for p in reversed(path) if isinstance(p, str)), None)
        return f"item {last + 1} of '{parent}'" if parent else f"item {last + 1}"
    return f"'{last}'"


def _owner(path: YamlPath, data: Any, kind: FileSchema = "pipeline") -> str:
    """Names the mapping at ``path`` for messages: the pipeline, step 'x', resource 'db'..."""
    if not path:
        return f"the {_FILE_NOUNS[kind]}"
    if len(path) == 2 and path[0] in ("steps", "tests") and isinstance(path[1], int):
        noun = path[0][:-1]
        item = data[path[0]][path[1]] if isinstance(data, dict) else None
        name = item.get("name") if isinstance(item, dict) else None
        return f"{noun} '{name}'" if isinstance(name, str) else f"{noun} {path[1] + 1}"
    if len(path) == 2 and path[0] == "resources":
        return f"resource '{path[1]}'"
    if len(path) == 2 and path[0] == "limits":
        return f"limit '{path[1]}'"
    return _subject(path)


def _describe_error(
    error: ValidationError, data: Any, file_kind: FileSchema = "pipeline"
) -> list[tuple[YamlPath, str, bool]]:
    """(path, message, point at the key?) for one schema error."""
    path: YamlPath = tuple(error.absolute_path)
    kind, schema = error.validator, error.schema
    instance: Any = error.instance
    expected: Any = error.validator_value
    assert isinstance(schema, dict)
    subject = _subject(path, file_kind)
    if path == ("halt", "failures") and kind in ("type", "pattern", "minimum"):
        shown = str(instance).lower() if isinstance(instance, bool) else repr(instance)
        return [
            (
                path,
                "'failures' must be a number of records (at least 1) or a percentage like "
                f"'2%', not {shown}",
                False,
            )
        ]
    limit = _limit_problem(path, str(kind), instance)
    if limit is not None:
        return [limit]
    if kind == "additionalProperties":
        return [((*path, key), message, True) for key, message in _unknown_keys(schema, instance)]
    if kind == "required":
        missing = [key for key in expected if key not in instance]
        hint = {"version": " (add 'version: 1')", "call": " (the callable to run)"}
        return [
            (
                path,
                f"{_owner(path, data, file_kind)} is missing required key "
                f"'{key}'{hint.get(key, '')}",
                False,
            )
            for key in missing
        ]
    if kind == "type":
        if expected == "object" and "call" in schema.get("properties", {}):
            # The mapping branch of a reference: a string would have been the other branch.
            wanted = "a reference like 'module:function' or a mapping {call: ..., with: ...}"
        else:
            names = [expected] if isinstance(expected, str) else list(expected)
            wanted = " or ".join(_TYPE_NAMES.get(n, n) for n in names)
        return [(path, f"{subject} must be {wanted}, not {kind_of(instance)}", False)]
    if kind == "const" and path == ("version",):
        return [
            (
                path,
                f"unsupported version {instance!r} — this choreo reads "
                f"{_FILE_NOUNS[file_kind]} files of version 1",
                False,
            )
        ]
    if kind == "enum":
        choices = [str(c) for c in expected]
        listed = ", ".join(f"'{c}'" for c in choices)
        message = f"{subject} must be one of {listed}, not {instance!r}"
        return [(path, message + did_you_mean(str(instance), choices), False)]
    if kind in ("minimum", "exclusiveMinimum"):
        bound = "at least" if kind == "minimum" else "more than"
        return [(path, f"{subject} must be {bound} {expected}, not {instance!r}", False)]
    if kind == "minItems" and path == ("steps",):
        return [(path, "'steps' is empty — add at least one step", False)]
    if kind in ("minItems", "minLength"):
        return [(path, f"{subject} must not be empty", False)]
    if kind == "pattern" and "propertyNames" in error.schema_path:
        return [
            (
                (*path, str(instance)),
                f"resource name {instance!r} is not a Python identifier — use letters, "
                "digits and _ so that ctx.resources.NAME works",
                True,
            )
        ]
    if kind == "pattern":
        return [
            (path, f"{subject} is not a valid reference: {instance!r} — {_REFERENCE_HINT}", False)
        ]
    return [(path, f"{subject}: {error.message}", False)]


def _limit_problem(path: YamlPath, kind: str, instance: Any) -> tuple[YamlPath, str, bool] | None:
    """The message of a schema error inside ``limits:`` that says more than the generic one."""
    if len(path) < 2 or path[0] != "limits":
        return None
    name = path[1]
    if len(path) == 2 and kind == "maxProperties":
        return (
            path,
            f"limit '{name}' has concurrency and other keys: a limit is either a token "
            "bucket {rate, burst} or a concurrency limit {concurrency} — split it into two limits",
            False,
        )
    if len(path) == 2 and kind == "required":
        return (
            path,
            f"limit '{name}' needs a rate (e.g. {{rate: 20/s, burst: 5}}) or a concurrency "
            "(e.g. {concurrency: 4})",
            False,
        )
    if path[2:] == ("rate",) and kind in ("pattern", "type"):
        from choreo_cli.core.limits import parse_rate

        try:
            parse_rate(instance if isinstance(instance, str) else repr(instance))
        except ValueError as exc:
            reason = str(exc)
        else:
            reason = f"{instance!r} is not a rate — write N/s, N/min or N/h, e.g. 20/s"
        return (path, f"limit '{name}': {reason}", False)
    return None


def _unknown_keys(schema: dict[str, Any], instance: Any) -> list[tuple[str, str]]:
    known = list(schema.get("properties", {}))
    patterns = list(schema.get("patternProperties", {}))
    extension = any(p == "^x-" for p in patterns)
    found = []
    for key in instance:
        if key in known or (extension and key.startswith("x-")):
            continue
        hint = did_you_mean(key, known)
        if hint:
            found.append((key, f"unknown key '{key}'{hint}"))
        else:
            allowed = ", ".join(known) + (", or x-... for your own anchors" if extension else "")
            found.append((key, f"unknown key '{key}' — allowed here: {allowed}"))
    return found
