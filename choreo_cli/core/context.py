"""What a step callable sees: the Context (``ctx``) and the record's DataBag."""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from time import monotonic
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import logging

    from choreo_cli.core.resources import Resources


class DataBag:
    """What prechecks and jobs returned for one record, by step name (case-insensitive).

    Examples:
        >>> bag = DataBag()
        >>> bag.set_job("Create Statement", 7)
        >>> bag.job("create statement"), bag.has_job("CREATE STATEMENT")
        (7, True)
    """

    __slots__ = ("_job", "_names", "_pre")

    def __init__(self, names: dict[str, str] | None = None) -> None:
        # Both maps are created on first store: most bags of a fast run hold one or two values.
        self._job: dict[str, Any] | None = None
        self._pre: dict[str, Any] | None = None
        # Folded key -> the step's own spelling; shared with the coordinator until a
        # name it does not know is stored (copy on write).
        self._names: dict[str, str] | None = names

    def job(self, name: str, default: Any = None) -> Any:
        """What the job of step ``name`` returned, or ``default``."""
        store = self._job
        return default if store is None else store.get(name.casefold(), default)

    def precheck(self, name: str, default: Any = None) -> Any:
        """What the precheck of step ``name`` returned (or its Skip data), or ``default``."""
        store = self._pre
        return default if store is None else store.get(name.casefold(), default)

    def has_job(self, name: str) -> bool:
        """True when the job of step ``name`` stored a value (a ``None`` return stores nothing)."""
        return self._job is not None and name.casefold() in self._job

    def has_precheck(self, name: str) -> bool:
        """True when the precheck of step ``name`` stored a value."""
        return self._pre is not None and name.casefold() in self._pre

    def set_job(self, name: str, value: Any) -> None:
        """Store ``value`` as step ``name``'s job data."""
        key = self._remember(name)
        if self._job is None:
            self._job = {}
        self._job[key] = value

    def set_precheck(self, name: str, value: Any) -> None:
        """Store ``value`` as step ``name``'s precheck data."""
        key = self._remember(name)
        if self._pre is None:
            self._pre = {}
        self._pre[key] = value

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{"precheck": {step: value}, "job": {step: value}}`` with the steps' own names."""
        names = self._names or {}
        return {
            "precheck": {names.get(k, k): v for k, v in (self._pre or {}).items()},
            "job": {names.get(k, k): v for k, v in (self._job or {}).items()},
        }

    def _remember(self, name: str) -> str:
        key = name.casefold()
        names = self._names
        if names is None:
            self._names = {key: name}
        elif key not in names:
            self._names = {**names, key: name}
        return key

    def __repr__(self) -> str:
        return f"DataBag({self.as_dict()!r})"


class _Frame:
    """Per-step facts a Context exposes: set once per step, never rebuilt per record."""

    __slots__ = ("log", "name")

    def __init__(self, name: str) -> None:
        import logging  # not at module level: `choreo --version` need not import it

        self.name = name
        self.log = logging.getLogger(f"choreo.step.{name}")


#: What a precheck that raises something other than Skip or Cancel does to its record:
#: "skip" its job (choreograph parity, the default) or "fail" the record.
PrecheckErrors = Literal["skip", "fail"]
PRECHECK_ERRORS: tuple[PrecheckErrors, ...] = ("skip", "fail")


class _RunFlags:
    """Shared by all records of a coordinator: whether the run in progress is interrupted.

    An interruption ends the run in progress, not the coordinator. ``interrupted`` (read
    before every step) is cleared when the run ends: when the last of the runs in
    progress (``runs``: a ``run_many`` or ``run_lines`` being iterated, a
    ``Coordinator.running()`` scope) ends, or, with none, when a ``run()`` ends. An
    ``interrupt()`` that comes while no run is in progress stops the next run at its
    start (a signal just before `choreo run` starts its loop is not lost).
    ``was_interrupted`` says whether the run in progress, or the last one, was
    interrupted; it is cleared when a run starts with no interruption pending.
    """

    __slots__ = (
        "_lock",
        "_wake",
        "dry_run",
        "interrupted",
        "precheck_errors",
        "reason",
        "runs",
        "was_interrupted",
    )

    def __init__(self) -> None:
        self.interrupted = False
        self.was_interrupted = False
        self.reason: str | None = None
        self.dry_run = False
        # What a precheck's exception other than Skip or Cancel does: "skip" its job
        # (choreograph parity) or "fail" the record (``precheck_errors: fail``).
        self.precheck_errors: PrecheckErrors = "skip"
        self.runs = 0
        # Wakes the retries waiting in wait_interrupted. Not a threading.Event: interrupt()
        # runs in signal handlers, on the main thread, perhaps while that thread holds the
        # Event's own lock (clearing it as a run ends), and Event.set then waited for that
        # lock forever (`choreo run` hung on a Ctrl-C at the end of a run). A SimpleQueue's
        # put takes no lock the interrupted code could hold: it is reentrant, for this.
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        # Reentrant: a run_many generator left to the garbage collector ends its run in
        # whatever code the collection interrupts, perhaps begin() or end() on this thread.
        self._lock = threading.RLock()

    def interrupt(self, reason: str) -> None:
        """Stop the run in progress (or the next one). Sets flags only: safe from a signal
        handler."""
        self.reason = reason
        self.was_interrupted = True
        self.interrupted = True
        self._wake.put(None)

    def wait_interrupted(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) if the run is interrupted meanwhile."""
        if seconds <= 0 or self.interrupted:
            return self.interrupted
        deadline = monotonic() + seconds
        while True:
            try:
                self._wake.get(timeout=max(0.0, deadline - monotonic()))
            except queue.Empty:
                return self.interrupted
            if self.interrupted:
                self._wake.put(None)  # passed on: every waiting retry wakes
                return True
            # Else the token of an interruption whose run has ended: dropped.

    def begin(self) -> None:
        """A run starts (it ends with ``end()``, also when it raises or is closed early)."""
        with self._lock:
            if not self.runs:
                self._starting()
            self.runs += 1

    def end(self) -> None:
        """A run ends; the last one in progress clears an interruption."""
        with self._lock:
            self.runs -= 1
            if not self.runs:
                self._clear()

    def begin_alone(self) -> None:
        """A ``run()`` of one record starts, perhaps within another run; called only when
        ``was_interrupted`` is set (the common path pays one attribute check)."""
        with self._lock:
            if not self.runs:
                self._starting()

    def end_alone(self) -> None:
        """A ``run()`` ended interrupted: outside any other run, it was the run to end."""
        with self._lock:
            if not self.runs:
                self._clear()

    def _starting(self) -> None:
        if not self.interrupted:
            self.was_interrupted = False
            self.reason = None

    def _clear(self) -> None:
        # In this order: an interrupt() that comes meanwhile is the ending run's, whole.
        wake = self._wake
        while not wake.empty():
            try:
                wake.get_nowait()
            except queue.Empty:
                break
        self.interrupted = False


class Context:
    """The ``ctx`` every step callable receives.

    Examples:
        >>> def create_line(ctx, record):
        ...     statement_id = ctx.bag.job("create statement") or ctx.bag.precheck("create statement")
        ...     ctx.log.info("line %s of %s", ctx.line, statement_id)
    """

    __slots__ = (
        "_attempts",
        "_conv",
        "_flags",
        "_frame",
        "bag",
        "index",
        "line",
        "record",
        "resources",
        "timed_out",
        "values",
    )

    def __init__(
        self,
        values: Mapping[str, Any],
        resources: Resources | Mapping[str, Any],
        bag: DataBag,
        record: Any,
        index: int,
        line: int | None,
        flags: _RunFlags,
    ) -> None:
        self.values = values
        self.resources = resources
        self.bag = bag
        self.record = record
        self.index = index
        self.line = line
        self._flags = flags
        self._frame: _Frame | None = None
        self._conv: dict[Any, Any] | None = None  # record converted per declared type
        self._attempts: dict[str, int] | None = None  # attempts of jobs that have retry:
        self.timed_out = False

    @property
    def step(self) -> str | None:
        """The name of the step being run."""
        frame = self._frame
        return None if frame is None else frame.name

    @property
    def log(self) -> logging.Logger:
        """A logger named ``choreo.step.<step>``."""
        frame = self._frame
        if frame is None:
            import logging

            return logging.getLogger("choreo.step")
        return frame.log

    @property
    def cancelled(self) -> bool:
        """True once the run was interrupted or this record's step ran past its timeout."""
        return self._flags.interrupted or self.timed_out

    def __repr__(self) -> str:
        return f"Context(index={self.index}, line={self.line}, step={self.step!r})"
