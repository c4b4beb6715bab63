"""A step's retry policy (`retry:` in a pipeline file) and how its `on:` names are resolved."""

from __future__ import annotations

import builtins
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from choreo_cli.refs import ReferenceResolutionError, resolve_reference


@dataclass(frozen=True)
class RetryPolicy:
    """How often and on which exceptions a job is retried.

    The wait before retry ``n`` (1-based) is ``delay * backoff ** (n - 1)``, at most
    ``max_delay``.

    >>> RetryPolicy(attempts=3, on=(ConnectionError,)).attempts
    3
    """

    attempts: int = 3
    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float | None = None
    on: tuple[type[BaseException], ...] = (Exception,)

    def wait(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        seconds = self.delay * self.backoff ** (retry - 1)
        return seconds if self.max_delay is None else min(seconds, self.max_delay)


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
            close = difflib.get_close_matches(name, names, n=1)
            hint = (
                f" — did you mean '{close[0]}'?"
                if close
                else (" — name a builtin exception, or write 'module:Class' for your own")
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


def refused_exception(cls: type[BaseException]) -> str | None:
    """Why ``cls`` cannot be in ``on:`` (a retry on it could never happen), or None."""
    from choreo_cli.errors import Cancel

    if not issubclass(cls, Exception):
        return f"{cls.__name__} is not an Exception class: it is never retried"
    if issubclass(cls, Cancel):
        return f"{cls.__name__} cancels the record: it is never retried"
    return None


def build_retry_policy(spec: Mapping[str, Any], on: tuple[type[BaseException], ...]) -> RetryPolicy:
    """A RetryPolicy from a checked ``retry:`` mapping and its resolved ``on:`` classes."""
    return RetryPolicy(
        attempts=int(spec.get("attempts", 3)),
        delay=float(spec.get("delay", 0.0)),
        backoff=float(spec.get("backoff", 1.0)),
        max_delay=None if spec.get("max_delay") is None else float(spec["max_delay"]),
        on=on or (Exception,),
    )
