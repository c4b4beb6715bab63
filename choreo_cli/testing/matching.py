"""Comparing an expectation with a result line: mappings as a subset, lists exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final


class _Missing:
    """The actual value of a key the result line does not have."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

Key = str | int


@dataclass(frozen=True)
class Difference:
    """Where an expectation and the actual value part: ``path`` inside the expectation
    (keys and list positions), the expected value there and the actual one (``MISSING``
    when the result has no such key)."""

    path: tuple[Key, ...]
    expected: Any
    actual: Any


def compare(expected: Any, actual: Any, path: tuple[Key, ...] = ()) -> list[Difference]:
    """Every difference between ``expected`` and ``actual``, deepest first found.

    A mapping matches when each of its keys is in ``actual`` and matches there (other keys
    of ``actual`` are ignored); a list matches a list of the same length whose items match
    one by one; anything else must be equal, with ``true`` never equal to ``1``.

    >>> compare({"status": "failed", "steps": {"a": "skipped"}},
    ...         {"status": "failed", "steps": {"a": "succeeded", "b": "not_run"}})
    [Difference(path=('steps', 'a'), expected='skipped', actual='succeeded')]
    >>> compare({"errors": []}, {"errors": [{"type": "Skip"}]})[0].path
    ('errors',)
    """
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [Difference(path, expected, actual)]
        found: list[Difference] = []
        for key, value in expected.items():
            if key in actual:
                found.extend(compare(value, actual[key], (*path, key)))
            else:
                found.append(Difference((*path, key), value, MISSING))
        return found
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            return [Difference(path, expected, actual)]
        found = []
        for index, (item, other) in enumerate(zip(expected, actual, strict=True)):
            found.extend(compare(item, other, (*path, index)))
        return found
    return [] if same_scalar(expected, actual) else [Difference(path, expected, actual)]


def same_scalar(expected: Any, actual: Any) -> bool:
    """JSON equality of two scalars: ``1 == 1.0``, but ``true`` is not ``1``, nor null ``""``.

    >>> same_scalar(1, 1.0), same_scalar(True, 1), same_scalar(None, None)
    (True, False, True)
    """
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (dict, list)) or isinstance(actual, (dict, list)):
        return False
    return bool(expected == actual)


def path_text(path: tuple[Key, ...]) -> str:
    """A difference's path as people read it: ``steps.create statement``, ``errors[0].type``.

    >>> path_text(("errors", 0, "type")), path_text(())
    ('errors[0].type', '')
    """
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text
