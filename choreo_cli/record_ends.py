"""How a record ends when it does not simply succeed: the Results of the rare paths.

The compiled runner (compiled.py) spells out the common path; when a precheck skips, a
callable raises or the run is interrupted, it calls these methods of the Coordinator,
so the semantics of §2 for those cases live in this one place.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

from choreo_cli.calling import Abandoned, InputMismatch
from choreo_cli.context import Context, DataBag, _RunFlags
from choreo_cli.errors import Cancel, Interrupted, Skip, StepTimeout
from choreo_cli.items import InvalidLine, Record
from choreo_cli.result import (
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

if TYPE_CHECKING:
    from choreo_cli.coordinator import Planned

# How a step stopped a record: (step outcome, record status, runtime error, also recorded?)
_Stop = tuple[Outcome, Status, ExecutionError, bool]


class RecordEnds:
    """The Coordinator's rare-path methods (a mixin: it reads the attributes below)."""

    _plan: list[Planned]
    _names: dict[str, str]
    _step_names: tuple[str, ...]
    _flags: _RunFlags

    def interrupt(self, reason: str = "interrupted") -> None:
        raise NotImplementedError

    def crashed(self, item: Any, index: int, exc: BaseException) -> Result:
        """A failed Result for an item whose run raised inside choreo itself."""
        error = ExecutionError(None, None, exc)
        line = getattr(item, "line", None)
        value = item.value if type(item) is Record else item
        return Result(
            index,
            line,
            value,
            FAILED,
            error,
            [error],
            DataBag(self._names),
            0.0,
            self._step_names,
            0,
            "failed",
            None,
            None,
            getattr(item, "raw", None),
        )

    def _invalid(self, item: InvalidLine, index: int) -> Result:
        error = ExecutionError(None, "input", item.exception)
        return Result(
            index,
            item.line,
            None,
            INVALID,
            error,
            [error],
            DataBag(self._names),
            0.0,
            self._step_names,
            0,
            None,
            None,
            None,
            item.raw,
        )

    # -- the rare paths of a record, called by the compiled runner ----------------------------

    def _on_skip(
        self,
        exc: Skip,
        i: int,
        bag: DataBag,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
    ) -> tuple[list[ExecutionError], list[int]]:
        """A precheck raised Skip: record it, keep its data, skip the job."""
        planned = self._plan[i]
        if exc.data is not None:
            if bag._pre is None:
                bag._pre = {}
            bag._pre[planned.key] = exc.data
        entry = ExecutionError(planned.name, "precheck", exc)
        return [*(errors or ()), entry], [*(skipped or ()), i]

    def _on_precheck_error(
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
        other exception skips the job like Skip (choreograph parity)."""
        name = self._plan[i].name
        stops = self._classify(exc, name)
        if stops is not None:
            return (
                errors,
                skipped,
                self._stopped(ctx, raw, started, errors, skipped, i, stops, "precheck"),
            )
        entry = ExecutionError(name, "precheck", exc)
        return [*(errors or ()), entry], [*(skipped or ()), i], None

    def _on_job_error(
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
        name = self._plan[i].name
        kind = self._classify(exc, name) or (
            "failed",
            FAILED,
            ExecutionError(name, "job", exc),
            True,
        )
        return self._stopped(ctx, raw, started, errors, skipped, i, kind, "job")

    def _on_interrupted(
        self,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
        i: int,
    ) -> Result:
        """The run was interrupted before step ``i``: the record is cancelled."""
        name = self._plan[i].name
        stopped = Interrupted(f"interrupted before step {name!r}")
        kind: _Stop = ("not_run", CANCELLED, ExecutionError(name, None, stopped), False)
        return self._stopped(ctx, raw, started, errors, skipped, i, kind)

    def _finish(
        self,
        ctx: Context,
        raw: bytes | None,
        started: float | None,
        errors: list[ExecutionError] | None,
        skipped: list[int] | None,
        stop: int,
    ) -> Result:
        """The Result of a record that ran every step, with skips or retried jobs."""
        attempts = ctx._attempts
        ctx._attempts = None
        return Result(
            ctx.index, ctx.line, ctx.record, SUCCEEDED, None, errors, ctx.bag,
            _since(started), self._step_names, stop, None, skipped, attempts, raw,
            self._flags.dry_run,
        )  # fmt: skip

    def _classify(self, exc: BaseException, name: str) -> _Stop | None:
        """How an exception from a callable stops the record, or None when it does not by itself.

        Returns (step outcome, record status, the runtime error, whether it is also an
        execution error); the phase is filled in by the caller.
        """
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
            self.interrupt("KeyboardInterrupt")
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
        attempts = ctx._attempts
        ctx._attempts = None
        if recorded:
            error = ExecutionError(error.step, phase, error.exception)
            errors = [*(errors or ()), error]
        return Result(
            ctx.index, ctx.line, ctx.record, status, error, errors, ctx.bag,
            _since(started), self._step_names, stop, outcome, skipped, attempts, raw,
            self._flags.dry_run,
        )  # fmt: skip


def _since(started: float | None) -> float | None:
    return None if started is None else perf_counter() - started
