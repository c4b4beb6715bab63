"""`retry:` in a pipeline file: how its `on:` names are resolved, and the policy it builds."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

from choreo_cli.core.retry import RetryPolicy
from choreo_cli.errors import did_you_mean
from choreo_cli.pipeline.refs import ReferenceResolutionError, resolve_reference


def builtin_exception(name: str) -> type[BaseException] | None:
    """The builtin exception class called ``name``, if there is one."""
    obj = getattr(builtins, name, None)
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return None


def is_builtin_name(name: str) -> bool:
    """True for a bare name (no dot or colon): it must be a builtin exception."""
    return "." not in name and ":" not in name


def resolve_exception(name: str, *, import_code: bool = True) -> type[BaseException] | None:
    """Resolve one ``on:`` entry: a builtin exception name or a reference to an exception class.

    Returns None for a reference when ``import_code`` is false. Raises ValueError with a
    message for people when the name cannot be used.

    >>> resolve_exception("ConnectionError")
    <class 'ConnectionError'>
    """
    if is_builtin_name(name):
        found = builtin_exception(name)
        if found is None:
            names = [n for n in dir(builtins) if builtin_exception(n) is not None]
            hint = did_you_mean(name, names) or (
                " — name a builtin exception, or write 'module:Class' for your own"
            )
            raise ValueError(f"'{name}' is not a builtin exception{hint}")
        return found
    if not import_code:
        return None
    try:
        obj = resolve_reference(name)
    except ReferenceResolutionError as exc:
        raise ValueError(exc.message) from None
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise ValueError(f"'{name}' is not an exception class (it is {type(obj).__name__!r})")
    return obj


def build_retry_policy(spec: Mapping[str, Any], on: tuple[type[BaseException], ...]) -> RetryPolicy:
    """A RetryPolicy from a checked ``retry:`` mapping and its resolved ``on:`` classes."""
    return RetryPolicy(
        attempts=int(spec.get("attempts", 3)),
        delay=float(spec.get("delay", 0.0)),
        backoff=float(spec.get("backoff", 1.0)),
        max_delay=None if spec.get("max_delay") is None else float(spec["max_delay"]),
        on=on or (Exception,),
    )
