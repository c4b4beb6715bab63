"""What running one record produced: its status, errors, step outcomes and data bag."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal, TypeAlias

from choreo_cli.core.context import DataBag
from choreo_cli.errors import Cancel, Interrupted, JobFailed, UnassignableInput

Status = Literal["succeeded", "failed", "cancelled", "invalid"]
Phase = Literal["precheck", "job", "input"]
Outcome = Literal["succeeded", "skipped", "failed", "cancelled", "not_run", "would_run"]

# Which steps' jobs a precheck skipped: bit i for step i. The step outcomes of a record
# that ran every step follow from it, so it is the one key of a re-run's common record:
# the fused line runner computes it as it runs, the process and Dask workers send it,
# the result-line templates (choreo_cli.jsonl.lines) and the summary are kept by it.
SkipPattern: TypeAlias = int

SUCCEEDED: Status = "succeeded"
FAILED: Status = "failed"
CANCELLED: Status = "cancelled"
INVALID: Status = "invalid"


def exception_message(exc: BaseException) -> str:
    """``str(exc)``; for an exception whose ``str()`` raises, a message saying so. The one
    message of an exception in a result line, whatever the executor (worker processes
    send it in place of the exception's own).

    >>> class Unprintable(Exception):
    ...     def __str__(self):
    ...         raise RuntimeError("no str")
    >>> exception_message(Unprintable())
    "<str() of the exception failed: RuntimeError('no str')>"
    """
    try:
        return str(exc)
    except Exception as failure:
        try:
            shown = repr(failure)
        except Exception:
            shown = f"<{type(failure).__qualname__} object: repr failed>"
        return f"<str() of the exception failed: {shown}>"


@dataclasses.dataclass(frozen=True, slots=True)
class ExecutionError:
    """One error raised while running a record: which step, which phase, what exception.

    Examples:
        >>> ExecutionError("create", "job", ValueError("bad amount")).to_json()
        {'step': 'create', 'phase': 'job', 'type': 'ValueError', 'message': 'bad amount'}
    """

    step: str | None
    phase: Phase | None
    exception: BaseException

    @property
    def type(self) -> str:
        """The exception's class name."""
        return type(self.exception).__name__

    @property
    def message(self) -> str:
        """The exception's message (``exception_message``)."""
        return exception_message(self.exception)

    def to_json(self) -> dict[str, Any]:
        """The error as it appears in a result line."""
        return {"step": self.step, "phase": self.phase, "type": self.type, "message": self.message}


class Result:
    """The outcome of one record.

    ``steps`` is computed on first access from a compact record of where the run stopped,
    so the hot loop never builds a dict per record. ``clean`` is True for a record that
    ran every step without an error or a retry (its line and counts are the common case).
    """

    clean = False  # a class attribute: True on the class made by clean_result_type()

    __slots__ = (
        "_errors",
        "_names",
        "_outcome",
        "_skipped",
        "_steps",
        "_stop",
        "_would",
        "attempts",
        "bag",
        "duration",
        "error",
        "index",
        "input",
        "line",
        "raw",
        "status",
    )

    def __init__(
        self,
        *,
        index: int,
        line: int | None,
        input: Any,
        status: Status,
        error: ExecutionError | None,
        errors: list[ExecutionError] | None,
        bag: DataBag,
        duration: float | None,
        names: tuple[str, ...],
        stop: int,
        outcome: Outcome | None = None,
        skipped: list[int] | None = None,
        attempts: dict[str, int] | None = None,
        raw: bytes | None = None,
        would_run: bool = False,
    ) -> None:
        """Every field by name; the named constructors below cover the usual cases.

        ``names`` are the pipeline's step names; ``stop`` the index of the step where
        the record stopped (``len(names)`` when it ran every step), whose outcome is
        ``outcome``; ``skipped`` the indices of steps whose precheck skipped the job.
        """
        self.index = index
        self.line = line
        self.input = input
        self.status = status
        self.error = error
        self._errors = errors
        self.bag = bag
        self.duration = duration
        self._names = names
        self._stop = stop
        self._outcome = outcome
        self._skipped = skipped
        self._steps: dict[str, Outcome] | None = None
        self.attempts: dict[str, int] = attempts if attempts is not None else {}
        self.raw = raw
        self._would = would_run

    @classmethod
    def invalid(
        cls,
        *,
        index: int,
        line: int | None,
        exception: BaseException,
        names: tuple[str, ...],
        raw: bytes | None = None,
    ) -> Result:
        """A record that could not be read (a bad JSON line): no step ran.

        Examples:
            >>> Result.invalid(index=0, line=1, exception=ValueError("not JSON"), names=("a",)).steps
            {'a': 'not_run'}
        """
        error = ExecutionError(None, "input", exception)
        bag = DataBag({n.casefold(): n for n in names})
        return cls(
            index=index, line=line, input=None, status=INVALID, error=error, errors=[error],
            bag=bag, duration=0.0, names=names, stop=0, raw=raw,
        )  # fmt: skip

    @classmethod
    def crashed(
        cls,
        *,
        index: int,
        line: int | None,
        value: Any,
        exception: BaseException,
        names: tuple[str, ...],
        raw: bytes | None = None,
    ) -> Result:
        """A record whose run raised inside choreo itself (a defect): failed, no step named.

        Examples:
            >>> Result.crashed(index=3, line=None, value={}, exception=RuntimeError("bug"), names=()).status
            'failed'
        """
        error = ExecutionError(None, None, exception)
        bag = DataBag({n.casefold(): n for n in names})
        return cls(
            index=index, line=line, input=value, status=FAILED, error=error, errors=[error],
            bag=bag, duration=0.0, names=names, stop=0, outcome="failed", raw=raw,
        )  # fmt: skip

    @classmethod
    def skipped_pattern(
        cls,
        steps: tuple[str, ...],
        *,
        names: tuple[str, ...],
        would_run: bool = False,
    ) -> Result:
        """A Result standing, in counts, for every succeeded record whose precheck skipped
        the jobs of ``steps`` with Skip (no index, line or message of its own).

        Examples:
            >>> Result.skipped_pattern(("b",), names=("a", "b")).steps
            {'a': 'succeeded', 'b': 'skipped'}
        """
        from choreo_cli.errors import Skip

        errors = [ExecutionError(step, "precheck", Skip()) for step in steps]
        bag = DataBag({n.casefold(): n for n in names})
        return cls(
            index=-1, line=None, input=None, status=SUCCEEDED, error=None, errors=errors,
            bag=bag, duration=None, names=names, stop=len(names),
            skipped=[names.index(step) for step in steps], would_run=would_run,
        )  # fmt: skip

    def _fields(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "line": self.line,
            "input": self.input,
            "status": self.status,
            "error": self.error,
            "errors": self._errors,
            "bag": self.bag,
            "duration": self.duration,
            "names": self._names,
            "stop": self._stop,
            "outcome": self._outcome,
            "skipped": self._skipped,
            "attempts": self.attempts or None,
            "raw": self.raw,
            "would_run": self._would,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        # A clean Result's class is made per pipeline (clean_result_type) and cannot be
        # found by name: every Result pickles as a plain one with the same fields.
        return (_rebuild, (self._fields(),))

    def __copy__(self) -> Result:
        return _rebuild(self._fields())

    @property
    def errors(self) -> list[ExecutionError]:
        """Every execution error of the record, in the order they were raised."""
        errors = self._errors
        return [] if errors is None else errors

    @property
    def steps(self) -> dict[str, Outcome]:
        """Step name -> outcome (succeeded/skipped/failed/cancelled/not_run/would_run)."""
        steps = self._steps
        if steps is None:
            steps = self._steps = self._build_steps()
        return steps

    @property
    def skip_pattern(self) -> SkipPattern:
        """Which steps' jobs a precheck skipped, as a ``SkipPattern`` (bit i: step i).

        Examples:
            >>> Result.skipped_pattern(("b",), names=("a", "b")).skip_pattern
            2
        """
        pattern = 0
        for i in self._skipped or ():
            pattern |= 1 << i
        return pattern

    @property
    def ok(self) -> bool:
        """True when the record succeeded."""
        return self.status == SUCCEEDED

    def raise_for_status(self) -> None:
        """Raise the error that stopped the record (JobFailed for a failed job), if any."""
        error = self.error
        if error is None:
            return
        exc = error.exception
        if isinstance(exc, (Cancel, Interrupted, UnassignableInput)) or error.phase == "input":
            raise exc
        raise JobFailed(f"step {error.step!r}: {error.type}: {error.message}") from exc

    def _build_steps(self) -> dict[str, Outcome]:
        names = self._names
        stop = self._stop
        skipped = self._skipped or ()
        ran: Outcome = "would_run" if self._would else "succeeded"
        steps: dict[str, Outcome] = {}
        for i, name in enumerate(names):
            if i < stop:
                steps[name] = "skipped" if i in skipped else ran
            elif i == stop and self._outcome is not None:
                steps[name] = self._outcome
            else:
                steps[name] = "not_run"
        return steps

    def __repr__(self) -> str:
        return f"Result(index={self.index}, status={self.status!r}, error={self.error!r})"


def _rebuild(fields: dict[str, Any]) -> Result:
    """A Result from its fields; a clean one (every step ran, no error) stays clean."""
    names = fields["names"]
    if (
        fields["status"] == SUCCEEDED
        and fields["errors"] is None
        and fields["attempts"] is None
        and fields["stop"] == len(names)
    ):
        result: Result = object.__new__(_clean_type(names, fields["would_run"]))
        for name in ("index", "line", "input", "bag", "duration", "raw"):
            setattr(result, name, fields[name])
        return result
    return Result(**fields)


@functools.lru_cache(maxsize=64)
def _clean_type(names: tuple[str, ...], would_run: bool) -> type[Result]:
    return clean_result_type(names, would_run=would_run)


def clean_result_type(names: tuple[str, ...], *, would_run: bool = False) -> type[Result]:
    """A Result subclass for records that ran every step without an error.

    Its constant fields are class attributes, so the hot loop sets only the six that vary
    (index, line, input, raw, bag, duration). Instances are never written after creation.
    """
    ran: Outcome = "would_run" if would_run else "succeeded"
    template: dict[str, Outcome] = dict.fromkeys(names, ran)

    def steps(self: Result) -> dict[str, Outcome]:
        return dict(template)

    def attempts(self: Result) -> dict[str, int]:
        return {}

    namespace: dict[str, Any] = {
        "__slots__": (),
        "__doc__": Result.__doc__,
        "__module__": Result.__module__,
        "__qualname__": "Result",
        "clean": True,
        "status": SUCCEEDED,
        "error": None,
        "_errors": None,
        "_names": names,
        "_stop": len(names),
        "_outcome": None,
        "_skipped": None,
        "_would": would_run,
        "steps": property(steps, doc=Result.steps.__doc__),
        "attempts": property(attempts),
    }
    return type("Result", (Result,), namespace)
