"""Exceptions: the ones step callables raise (Skip, Cancel) and the ones choreo reports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 1) -> str:
    """The end of a message suggesting the closest of ``choices`` to ``word``, or "".

    >>> did_you_mean("retrys", ["retry", "timeout"])
    " — did you mean 'retry'?"
    >>> did_you_mean("zzz", ["retry"])
    ''
    """
    import difflib  # only when a message is made

    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " — did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


class ChoreoError(Exception):
    """Base class of the errors choreo itself raises."""


class Skip(Exception):
    """Raised by a precheck to skip its job; ``data`` is kept as the step's precheck data.

    Examples:
        >>> def statement_exists(ctx, record):
        ...     raise Skip("statement exists", data=42)
    """

    def __init__(self, message: str = "", *, data: Any = None) -> None:
        super().__init__(message)
        self.data = data


class Cancel(Exception):
    """Raised by a precheck or a job to cancel the record: no later step runs."""


ExecutionCanceled = Cancel


class JobFailed(ChoreoError):
    """A record's job raised: raised by ``Result.raise_for_status()`` with the job's error as cause."""


class UnassignableInput(ChoreoError):
    """The record cannot be given to a callable's declared parameter type."""


class StepTimeout(ChoreoError):
    """One attempt of a precheck or job ran past the step's ``timeout``."""


class Interrupted(ChoreoError):
    """The run was interrupted before (or while) the record's step ran."""


class StepDefinitionError(ChoreoError):
    """A step cannot be added: the message names the step, the callable and what is wrong."""

    def __init__(
        self,
        reason: str,
        *,
        step: str | None = None,
        phase: str | None = None,
        callable_name: str | None = None,
        key: str | None = None,
    ) -> None:
        self.reason = reason
        self.step = step
        self.phase = phase
        self.callable_name = callable_name
        self.key = key  # the offending `with:` key, when there is one
        parts = []
        if step is not None:
            parts.append(f"step {step!r}")
        if phase is not None and callable_name is not None:
            parts.append(f"{phase} {callable_name}")
        elif callable_name is not None:
            parts.append(callable_name)
        super().__init__(": ".join([*parts, reason]))


class ResourceError(ChoreoError):
    """A resource factory or teardown failed; the message names the resource."""


class PipelineError(ChoreoError):
    """A pipeline file is unusable; ``problems`` lists every problem found, with positions."""

    def __init__(self, problems: list[Any]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
