"""A step's retry policy: how often, how long apart and on which exceptions a job is retried."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How often and on which exceptions a job is retried.

    The wait before retry ``n`` (1-based) is ``delay * backoff ** (n - 1)``, at most
    ``max_delay``.

    Examples:
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


def refused_exception(cls: type[BaseException]) -> str | None:
    """Why ``cls`` cannot be in ``on:`` (a retry on it could never happen), or None."""
    from choreo_cli.errors import Cancel

    if not issubclass(cls, Exception):
        return f"{cls.__name__} is not an Exception class: it is never retried"
    if issubclass(cls, Cancel):
        return f"{cls.__name__} cancels the record: it is never retried"
    return None
