"""A coordinator's steps as the runners see them: one immutable snapshot, rebuilt by add_step."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from choreo_cli.core.calling import ainvoke, invoke
from choreo_cli.core.outcomes import Outcomes
from choreo_cli.core.result import Result, clean_result_type
from choreo_cli.core.watchdog import ASYNC_GRACE, Timed, resolution_for

if TYPE_CHECKING:
    from choreo_cli.core.context import Context, _RunFlags
    from choreo_cli.core.limits import Gate, Limit
    from choreo_cli.core.signatures import CallSpec
    from choreo_cli.core.step import Planned
    from choreo_cli.core.workers import Worker


class Plan:
    """The checked steps of a coordinator and everything a runner reads from them.

    The compiled runners (compiled.py), the interpreted one (interpreted.py) and the
    fused line runner of `choreo run` are built from a Plan and call back into it: its
    ``outcomes`` for the rare paths of a record, ``invoke``/``ainvoke`` for the general
    call path. A Plan never changes: ``add_step`` makes a new one.
    """

    __slots__ = (
        "by_spec",
        "clean",
        "dry_run",
        "flags",
        "gates",
        "names",
        "outcomes",
        "step_names",
        "steps",
        "timed",
        "timings",
    )

    def __init__(
        self,
        steps: tuple[Planned, ...],
        flags: _RunFlags,
        *,
        timings: bool,
    ) -> None:
        self.steps = steps
        self.flags = flags
        self.dry_run = flags.dry_run
        # False: Result.duration is None, and a trivial record costs a third less.
        self.timings = timings
        self.names: dict[str, str] = {p.key: p.name for p in steps}
        self.step_names: tuple[str, ...] = tuple(p.name for p in steps)
        self.by_spec: dict[int, Planned] = {id(s): p for p in steps for s in p.specs()}
        self.clean: type[Result] = clean_result_type(self.step_names, would_run=self.dry_run)
        self.outcomes = Outcomes(steps, self.names, self.step_names, flags)
        # The limits of each callable that has some (a Gate), by id(spec).
        self.gates: dict[int, Gate] = {
            id(spec): gate
            for p in steps
            for spec, gate in ((p.pre, p.pre_gate), (p.job, p.job_gate))
            if spec is not None and gate is not None
        }
        # The deadline-slot token of each callable of a step with a timeout, by id(spec).
        self.timed: dict[int, Timed] = {
            id(spec): Timed(
                i,
                "precheck" if spec is p.pre else "job",
                spec,
                p.timeout,
                ASYNC_GRACE if spec.is_async else 0.0,
            )
            for i, p in enumerate(steps)
            if p.timeout is not None
            for spec in p.specs()
        }

    @property
    def has_timeout(self) -> bool:
        """True if a step has a timeout (its records run where a call can be given up on)."""
        return bool(self.timed)

    @property
    def resolution(self) -> float:
        """How often the watchdog samples the workers for this plan's timeouts."""
        return resolution_for([t.timeout for t in self.timed.values()])

    @property
    def limits(self) -> tuple[Limit, ...]:
        """Every limit a callable of this plan waits for, once each, by name."""
        found = {id(limit): limit for gate in self.gates.values() for limit in gate.limits}
        return tuple(sorted(found.values(), key=lambda limit: limit.name))

    @property
    def has_retry(self) -> bool:
        """True if a step's job has a retry policy (its records may carry attempts)."""
        return any(p.retry is not None for p in self.steps)

    @property
    def has_async(self) -> bool:
        """True if a step has an async precheck or job."""
        return any(spec.is_async for p in self.steps for spec in p.specs())

    def invoke(self, spec: CallSpec, ctx: Context, value: Any, worker: Worker) -> Any:
        """The general call path (conversion, async, timeout, retry): see calling.py."""
        key = id(spec)
        return invoke(
            spec,
            ctx,
            value,
            worker,
            self.by_spec.get(key),
            self.timed.get(key),
            self.flags,
            self.gates.get(key),
        )

    def ainvoke(self, spec: CallSpec, ctx: Context, value: Any, worker: Worker) -> Awaitable[Any]:
        """The general call path of an async callable awaited in place: see calling.py."""
        key = id(spec)
        return ainvoke(
            spec,
            ctx,
            value,
            worker,
            self.by_spec.get(key),
            self.timed.get(key),
            self.flags,
            self.gates.get(key),
        )
