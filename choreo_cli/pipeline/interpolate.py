"""`${VAR}` and `${VAR:-default}` expansion from the environment; `$${` writes a literal `${`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_INNER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)

IssueKind = Literal["unset", "malformed"]


@dataclass(frozen=True)
class InterpolationIssue:
    """A variable that is not set (and has no default), or a malformed ``${...}``.

    ``path`` is where the string is inside the value given to :func:`interpolate`.
    """

    path: tuple[str | int, ...]
    kind: IssueKind
    message: str


def expand(text: str, environ: Mapping[str, str]) -> tuple[str, list[tuple[IssueKind, str]]]:
    """Expand one string; an unset variable with no default becomes "" and an issue.

    Like the shell's ``${VAR:-default}``, the default is used when VAR is unset or empty.

    >>> expand("db=${DB:-x.db} cost=$${price}", {})
    ('db=x.db cost=${price}', [])
    """
    if "$" not in text:
        return text, []
    issues: list[tuple[IssueKind, str]] = []

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        inner = match.group(1)
        parsed = _INNER.fullmatch(inner) if inner is not None else None
        if parsed is None or "${" in (parsed.group(2) or ""):
            shown = token if inner is not None else text[match.start() :]
            issues.append(
                (
                    "malformed",
                    f"malformed '{shown}' — write ${{NAME}} or ${{NAME:-default}}, "
                    "or $${ for a literal ${",
                )
            )
            return token
        name, default = parsed.group(1), parsed.group(2)
        value = environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is None:
            issues.append(
                (
                    "unset",
                    f"environment variable '{name}' is not set and has no default — "
                    f"set it, or write ${{{name}:-default}}",
                )
            )
        return ""

    return _TOKEN.sub(replace, text), issues


def interpolate(
    value: Any, environ: Mapping[str, str], *, path: tuple[str | int, ...] = ()
) -> tuple[Any, list[InterpolationIssue]]:
    """Expand every string inside ``value`` (mappings and lists too; keys are left alone).

    Returns a new value and the issues found, each with the path of its string.

    >>> interpolate({"dsn": "${DB:-a.db}", "ports": ["${P:-80}"]}, {"P": "8080"})
    ({'dsn': 'a.db', 'ports': ['8080']}, [])
    """
    issues: list[InterpolationIssue] = []
    result = _walk(value, environ, path, issues)
    return result, issues


def _walk(
    value: Any,
    environ: Mapping[str, str],
    path: tuple[str | int, ...],
    issues: list[InterpolationIssue],
) -> Any:
    if isinstance(value, str):
        text, found = expand(value, environ)
        issues.extend(InterpolationIssue(path, kind, message) for kind, message in found)
        return text
    if isinstance(value, dict):
        return {key: _walk(item, environ, (*path, key), issues) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, environ, (*path, index), issues) for index, item in enumerate(value)]
    return value
