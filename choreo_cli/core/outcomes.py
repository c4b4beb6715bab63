"""How a record ends when it does not simply succeed: the Results of the rare paths.

The compiled runners (compiled.py) and the interpreted one (interpreted.py) spell out the
common path; when a precheck skips, a callable raises or the run is interrupted, they
call an ``Outcomes`` built from the same steps, so what such a record becomes is decided
in this one place (the README's "What a step does: the semantics").
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

from choreo_cli.core.calling import Abandoned, InputMismatch
from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.core.result import (
    CANCELLED,
    FAILED,
    INVALID,
    SUCCEEDED,
    ExecutionError,
    Outcome,
    Phase,
    Result,
    Status,
)
from choreo_cli.core.watchdog import WorkerAbandoned
from choreo_cli.errors import Cancel, Interrupted, Skip, StepTimeout

if TYPE_CHECKING:
    from choreo_cli.core.context import Context, DataBag, _RunFlags
    from choreo_cli.core.step import Planned

# How a step stopped a record: (step outcome, record status, runtime error, also recorded?)
_Stop = tuple[Outcome, Status, ExecutionError, bool]


class Outcomes:
    """The rare-path Results of one coordinator's steps.

    >>> from choreo_cli.core.context import _RunFlags
    >>> Outcomes((), {}, (), _RunFlags()).crashed({"id": 1}, 0, RuntimeError("bug")).status
    'failed'
    """

    __slots__ = ("_flags", "_names", "_step_names", "_steps")

    def __init__(
        self,
        steps: tuple[Planned, ...],
        names: dict[str, str],
        step_names: tuple[str, ...],
        flags: _RunFlags,
    ) -> None:
        self._steps = steps
        self._names = names
        self._step_names = step_names
        self._flags = flags

    def crashed(self, item: Any, index: int, exc: BaseException) -> Result:
        """A failed Result for an item whose run raised inside choreo itself."""
        value = item.value if type(item) is Record else item
        return Result.crashed(
            index=index,
            line=getattr(item, "line", None),
            value=value,
            exception=exc,
            names=self._step_names,
            raw=getattr(item, "raw", None),
        )

    def invalid(self, item: InvalidLine, index: int) -> Result:
        """The Result of an input line that is not a record."""
        return Result.invalid(
            index=index,
            line=item.line,
            exception=item.exception,
            names=self._step_names,
            raw=item.raw,
        )

    # -- the rare paths of a record, called by the runners --------------------------------

    def on_skip(
        self,
        exc: Skip,
        i: int,
        bag: DataBag,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
    ) -> tuple[list[ExecutionError], list[int]]:
        """A precheck raised Skip: record it, keep its data, skip the job."""
        planned = self._steps[i]
        if exc.data is not None:
            if bag._pre is None:
                bag._pre = {}
            bag._pre[planned.key] = exc.data
        entry = ExecutionError(planned.name, "precheck", exc)
        return [*(errors or ()), entry], [*(skipped or ()), i]

    def on_precheck_error(
        self,
        exc: BaseException,
        i: int,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
    ) -> tuple[list[ExecutionError] | None, list[int] | None, Result | None]:
        """A precheck raised something else: Cancel (and the like) stops the record; any
        other exception skips the job like Skip (choreograph parity), or, with
        ``precheck_errors: fail``, fails the record (step outcome ``failed``, phase
        ``precheck``)."""
        name = self._steps[i].name
        stops = self._classify(exc, name)
        if stops is None and self._flags.precheck_errors == "fail":
            stops = ("failed", FAILED, ExecutionError(name, None, exc), True)
        if stops is not None:
            return (
                errors,
                skipped,
                self._stopped(ctx, raw, started, errors, skipped, i, stops, "precheck"),
            )
        entry = ExecutionError(name, "precheck", exc)
        return [*(errors or ()), entry], [*(skipped or ()), i], None

    def on_job_error(
        self,
        exc: BaseException,
        i: int,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
    ) -> Result:
        """A job raised: the record is cancelled (Cancel), invalid, interrupted or failed."""
        name = self._steps[i].name
        kind = self._classify(exc, name) or (
            "failed",
            FAILED,
            ExecutionError(name, "job", exc),
            True,
        )
        return self._stopped(ctx, raw, started, errors, skipped, i, kind, "job")

    def on_interrupted(
        self,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
        i: int,
    ) -> Result:
        """The run was interrupted before step ``i``: the record is cancelled."""
        name = self._steps[i].name
        stopped = Interrupted(f"interrupted before step {name!r}")
        kind: _Stop = ("not_run", CANCELLED, ExecutionError(name, None, stopped), False)
        return self._stopped(ctx, raw, started, errors, skipped, i, kind)

    def finish(
        self,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
        stop: int,
    ) -> Result:
        """The Result of a record that ran every step, with skips or retried jobs."""
        return self._result(ctx, raw, started, SUCCEEDED, None, errors, skipped, stop, None)

    def _classify(self, exc: BaseException, name: str) -> _Stop | None:
        """How an exception from a callable stops the record, or None when it does not by itself.

        Returns (step outcome, record status, the runtime error, whether it is also an
        execution error); the phase is filled in by the caller.
        """
        if isinstance(exc, WorkerAbandoned):
            # The watchdog gave this thread's call up and ended the record already: the
            # thread unwinds (see watchdog.py).
            raise exc
        if isinstance(exc, Cancel):
            return ("cancelled", CANCELLED, ExecutionError(name, None, exc), True)
        if isinstance(exc, InputMismatch):
            return ("not_run", INVALID, ExecutionError(name, None, exc.error), True)
        if isinstance(exc, StepTimeout):  # a precheck's timeout fails the step, too
            return ("failed", FAILED, ExecutionError(name, None, exc), True)
        if isinstance(exc, Abandoned):
            stopped = Interrupted(str(exc))
            return ("cancelled", CANCELLED, ExecutionError(name, None, stopped), False)
        if isinstance(exc, KeyboardInterrupt):
            self._flags.interrupt("KeyboardInterrupt")
            stopped = Interrupted(f"interrupted during step {name!r}")
            return ("cancelled", CANCELLED, ExecutionError(name, None, stopped), False)
        return None

    def _stopped(
        self,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
        stop: int,
        kind: _Stop,
        phase: Phase | None = None,
    ) -> Result:
        """The Result of a record that a step stopped (cancelled, failed, invalid, interrupted)."""
        outcome, status, error, recorded = kind
        if recorded:
            error = ExecutionError(error.step, phase, error.exception)
            errors = [*(errors or ()), error]
        return self._result(ctx, raw, started, status, error, errors, skipped, stop, outcome)

    def _result(
        self,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        status: Status,
        error: ExecutionError | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
        stop: int,
        outcome: Outcome | None,
    ) -> Result:
        attempts = ctx._attempts
        ctx._attempts = None
        return Result(
            index=ctx.index,
            line=ctx.line,
            input=ctx.record,
            status=status,
            error=error,
            errors=errors,
            bag=ctx.bag,
            duration=None if started is None else perf_counter() - started,
            names=self._step_names,
            stop=stop,
            outcome=outcome,
            skipped=skipped,
            attempts=attempts,
            raw=raw,
            would_run=self._flags.dry_run,
        )
