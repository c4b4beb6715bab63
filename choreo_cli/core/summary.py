"""The run's figures: records by status, per-step counts, timing, and the exit code."""

from __future__ import annotations

import datetime
import json
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from choreo_cli.core.exit_codes import ExitCode
from choreo_cli.core.timings import StepTimes
from choreo_cli.errors import Skip, StepTimeout

if TYPE_CHECKING:
    from choreo_cli.core.budget import Halt
    from choreo_cli.core.result import SkipPattern

# A group of errors or of precheck exceptions: [count, first line (None: none known)].
_Group = list[Any]

STATUSES = ("succeeded", "failed", "cancelled", "invalid")
STEP_COUNTS = ("ran", "skipped", "failed", "cancelled", "would_run")
# The step outcomes of a succeeded record, and what each counts as.
_SUCCEEDED_COUNTS = {"succeeded": "ran", "skipped": "skipped", "would_run": "would_run"}
_SIGNAL_CODES = {
    int(signal.SIGINT): ExitCode.INTERRUPTED,
    int(signal.SIGTERM): ExitCode.TERMINATED,
}


class SummarizedResult(Protocol):
    """The part of ``choreo_cli.core.result.Result`` the summary reads."""

    status: str
    error: Any
    clean: bool
    line: int | None

    @property
    def errors(self) -> Any: ...

    @property
    def attempts(self) -> dict[str, int]: ...

    @property
    def steps(self) -> dict[str, str]: ...

    @property
    def skip_pattern(self) -> SkipPattern: ...


class RunSummary:
    """Counts of a run, fed one result at a time; the exit code is computed from them.

    A record that succeeded without any error ran every step's job (or would have, in a
    dry run): such records are only counted, and folded into the per-step figures when
    they are read, so the hot loop never builds ``result.steps`` for them.

    What reads it may run on another thread while the loop feeds it (the periodic
    metrics): the reading side iterates copies of the dicts the loop grows, each copy
    taken in one call (``list(d.items())``), never the dicts themselves.

    >>> summary = RunSummary(["create"])
    >>> summary.finish()
    >>> summary.counts["succeeded"], int(summary.exit_code)
    (0, 0)
    """

    def __init__(
        self,
        step_names: Iterable[str] = (),
        *,
        clock: Callable[[], float] = time.perf_counter,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self.started = clock()
        #: When the clock started, in seconds since the epoch (``started_at``).
        self.started_at = now()
        self.wall_time: float | None = None
        #: The pipeline file as given, the sha256 of its bytes (None: it could not be
        #: read), and the input as given (``-``: stdin); None until ``record_run``.
        self.pipeline: str | None = None
        self.pipeline_sha256: str | None = None
        self.input: str | None = None
        self.resumed = 0
        self.signal: int | None = None
        self.broken_pipe = False
        self.teardown_failed = False
        self.output_failed = False
        #: Why the run was refused before any record (exit 2), or None.
        self.error: str | None = None
        #: Per limit: ``{waits, wait_seconds, workers, share}`` (see core/limits.py).
        self.limits: dict[str, dict[str, Any]] = {}
        #: Why the run stopped early (--fail-fast, a failure budget: exit 3), or None.
        self.halted: Halt | None = None
        #: How long each step's prechecks and jobs took (see core/timings.py).
        self._times = StepTimes()
        # Where the times of a run still going are read (the executor's), or None.
        self._times_source: Callable[[], StepTimes] | None = None
        self._counts = dict.fromkeys(STATUSES, 0)
        self._steps: dict[str, dict[str, int]] = {
            name: dict.fromkeys(STEP_COUNTS, 0) for name in step_names
        }
        self._clean = 0
        self._clean_steps: dict[str, str] | None = None
        # Other succeeded records (some jobs skipped), by SkipPattern: [count, step outcomes].
        self._patterns: dict[SkipPattern, list[Any]] = {}
        # The last Result counted by pattern, and its pattern's entry: the fused loop and
        # the workers stand for each record of a pattern by one Result.
        self._last: tuple[Any, list[Any]] | None = None
        # Per step: attempts of its job past the first; the exceptions other than Skip and
        # Cancel its precheck raised, by type name. Few keys each, whatever the input size.
        self._retries: dict[str, int] = {}
        self._precheck_errors: dict[str, dict[str, _Group]] = {}
        # The same, for those treated as a skip only (not failing their record).
        self._precheck_skips: dict[str, dict[str, _Group]] = {}
        # The errors that ended records, by (step, phase, type), in the order first seen.
        self._errors: dict[tuple[str | None, str | None, str], _Group] = {}

    # -- feeding --------------------------------------------------------------------------

    def add(self, result: SummarizedResult) -> None:
        """Count one result."""
        if result.clean:
            if self._clean_steps is None:
                # The same for every clean record of the run: "succeeded" (or "would_run").
                self.add_clean(1, result.steps)
            else:
                self._clean += 1
            return
        last = self._last
        if last is not None and last[0] is result:
            # A stand-in for records of a pattern of plain Skips (no retries, no errors).
            last[1][0] += 1
            return
        attempts = result.attempts
        if attempts:
            self._count_retries(attempts)
        status = result.status
        errors = result.errors
        if status == "succeeded":
            if not errors:  # ran every step: retried, but without an error
                if self._clean_steps is None:
                    self.add_clean(1, result.steps)
                else:
                    self._clean += 1
                return
            # Every error of a succeeded record is its prechecks' (each skipped a job).
            for entry in errors:
                exc = entry.exception
                if type(exc) is not Skip and not isinstance(exc, Skip):
                    self._count_precheck_error(entry.step, entry.type, result.line, skipped=True)
            # Ran every step, some jobs skipped: counted per pattern (the step outcomes
            # follow from it).
            key = result.skip_pattern
            seen = self._patterns.get(key)
            if seen is not None:
                seen[0] += 1
                self._last = (result, seen)
                return
            steps = dict(result.steps)
            if all(outcome in _SUCCEEDED_COUNTS for outcome in steps.values()):
                for name in steps:
                    self._step(name)
                seen = self._patterns[key] = [1, steps]
                self._last = (result, seen)
                return
        self._counts[status] += 1
        error = result.error
        steps = result.steps
        self._count_error(error, result.line)
        if errors and status != "succeeded":
            self._count_precheck_errors(errors, steps, result.line)
        for name, outcome in steps.items():
            if outcome == "not_run":
                continue
            counts = self._step(name)
            if outcome == "succeeded":
                counts["ran"] += 1
            elif outcome == "failed":
                # A precheck that failed the step (precheck_errors: fail, a timeout) did
                # not call the job.
                if error is None or error.step != name or error.phase != "precheck":
                    counts["ran"] += 1
                counts["failed"] += 1
            elif outcome == "skipped":
                counts["skipped"] += 1
            elif outcome == "cancelled":
                counts["cancelled"] += 1
                if error is not None and error.step == name and error.phase == "job":
                    counts["ran"] += 1
            elif outcome == "would_run":
                counts["would_run"] += 1

    def _count_retries(self, attempts: dict[str, int]) -> None:
        retries = self._retries
        for name, count in attempts.items():
            if count > 1:
                retries[name] = retries.get(name, 0) + count - 1

    def _count_precheck_errors(
        self, errors: Iterable[Any], steps: dict[str, str], line: int | None
    ) -> None:
        """The precheck exceptions other than Skip or Cancel of a record that did not
        succeed: those that skipped a job, and the one that failed it (precheck_errors:
        fail); a timeout, Cancel or a record type mismatch is not one."""
        for entry in errors:
            if entry.phase != "precheck":
                continue
            exc = entry.exception
            outcome = steps.get(entry.step)
            if outcome == "skipped":
                if isinstance(exc, Skip):
                    continue
            elif outcome != "failed" or isinstance(exc, StepTimeout):
                continue
            self._count_precheck_error(entry.step, entry.type, line, skipped=outcome == "skipped")

    def _count_precheck_error(
        self, step: str, kind: str, line: int | None, *, skipped: bool
    ) -> None:
        tables = (
            (self._precheck_errors, self._precheck_skips) if skipped else (self._precheck_errors,)
        )
        for table in tables:
            by_type = table.get(step)
            if by_type is None:
                by_type = table[step] = {}
            _count_group(by_type, kind, line)

    def _count_error(self, error: Any, line: int | None) -> None:
        """The error that ended a record, in its group (step, phase, type)."""
        if error is None:
            return
        phase = error.phase if error.phase in ("precheck", "job") else None
        _count_group(self._errors, (error.step, phase, error.type), line)

    def add_clean(self, count: int, steps: dict[str, str]) -> None:
        """Count ``count`` results that ran every step without an error (``steps``: their
        step outcomes, all "succeeded" or all "would_run")."""
        if not count:
            return
        self._clean += count
        if self._clean_steps is None:
            self._clean_steps = dict(steps)
            for name in self._clean_steps:
                self._step(name)

    def record_run(self, *, pipeline: str, pipeline_sha256: str | None, input: str) -> None:
        """Which pipeline file (``pipeline_sha256``: of its bytes, None when it could not be
        read) ran over which input (``-``: stdin)."""
        self.pipeline, self.pipeline_sha256, self.input = pipeline, pipeline_sha256, input

    def count_resumed(self) -> None:
        """One record was skipped because an earlier run finished it (``--checkpoint``)."""
        self.resumed += 1

    def record_signal(self, signum: int) -> None:
        """The run was interrupted by ``signum`` (SIGINT: exit 130, SIGTERM: 143)."""
        if self.signal is None:
            self.signal = int(signum)

    def record_halt(self, halt: Halt) -> None:
        """The run stopped early, some input not run (``--fail-fast``, a failure budget):
        exit 3. The first halt is the one kept."""
        if self.halted is None:
            self.halted = halt

    def record_broken_pipe(self) -> None:
        """The output's reader went away (exit 141)."""
        self.broken_pipe = True

    def record_teardown_failure(self) -> None:
        """A resource's teardown failed: results may not be durable (exit 1)."""
        self.teardown_failed = True

    def record_output_failure(self) -> None:
        """Result lines could not be written (disk full...): exit 1."""
        self.output_failed = True

    def record_limits(self, figures: dict[str, dict[str, Any]]) -> None:
        """How often calls waited for each limit, for how long, and each worker's share."""
        self.limits = {name: dict(figure) for name, figure in figures.items()}

    def add_times(self, times: StepTimes) -> None:
        """Add the call durations a worker timed (see core/timings.py)."""
        self._times.merge(times)

    def watch_times(self, source: Callable[[], StepTimes] | None) -> None:
        """Read the call times from ``source`` while the run goes on (for a summary read
        before the end, such as the periodic metrics); None: no longer."""
        self._times_source = source

    @property
    def times(self) -> StepTimes:
        """How long each step's prechecks and jobs took (see core/timings.py)."""
        source = self._times_source
        if source is None:
            return self._times
        times = StepTimes()
        times.merge(self._times)
        times.merge(source())
        return times

    def record_usage_error(self, message: str) -> None:
        """The command line, the pipeline or the input was unusable: no record ran (exit 2)."""
        self.error = message

    def finish(self) -> None:
        """Stop the clock: ``wall_time`` is the time since the summary was created."""
        self.wall_time = self._clock() - self.started

    # -- reading --------------------------------------------------------------------------

    @property
    def counts(self) -> dict[str, int]:
        """Records by status (``succeeded``, ``failed``, ``cancelled``, ``invalid``)."""
        counts = dict(self._counts)
        counts["succeeded"] += self._clean + self._patterned
        return counts

    @property
    def total(self) -> int:
        """Records processed in this run (resumed ones are not)."""
        return sum(self._counts.values()) + self._clean + self._patterned

    @property
    def _patterned(self) -> int:
        return sum(count for count, _ in list(self._patterns.values()))

    @property
    def steps(self) -> dict[str, dict[str, int]]:
        """Step name -> {ran, skipped, failed, cancelled, would_run}, in pipeline order."""
        steps = {name: dict(counts) for name, counts in list(self._steps.items())}
        if self._clean and self._clean_steps is not None:
            for name, outcome in self._clean_steps.items():
                key = "would_run" if outcome == "would_run" else "ran"
                steps[name][key] += self._clean
        for count, outcomes in list(self._patterns.values()):
            for name, outcome in outcomes.items():
                steps[name][_SUCCEEDED_COUNTS[outcome]] += count
        return steps

    @property
    def retries(self) -> dict[str, int]:
        """Step name -> attempts of its job past the first, for the steps that retried."""
        return dict(self._retries)

    @property
    def precheck_errors(self) -> dict[str, dict[str, dict[str, int | None]]]:
        """Step name -> exception type -> ``{count, first_line}``: the prechecks that raised
        something other than Skip or Cancel, for the steps that have some."""
        return {
            step: {kind: _group_json(group) for kind, group in list(by_type.items())}
            for step, by_type in list(self._precheck_errors.items())
        }

    @property
    def precheck_skips(self) -> list[tuple[str, str, int, int | None]]:
        """The precheck exceptions other than Skip or Cancel that were treated as a skip
        (``precheck_errors: skip``, the default), each a likely bug: (step, exception
        type, records, first line or None), in pipeline order, then as first seen."""
        order = {name: i for i, name in enumerate(list(self._steps))}
        found = sorted(
            self._precheck_skips.items(), key=lambda item: order.get(item[0], len(order))
        )
        return [
            (step, kind, group[0], group[1])
            for step, by_type in found
            for kind, group in list(by_type.items())
        ]

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The errors that ended records (failed, cancelled, invalid), grouped by step,
        phase and type: ``{step, phase, type, count, first_line}``, the most frequent first
        (ties: the first seen first)."""
        groups = sorted(self._errors.items(), key=lambda item: -item[1][0])
        return [
            {"step": step, "phase": phase, "type": kind, **_group_json(group)}
            for (step, phase, kind), group in groups
        ]

    @property
    def elapsed(self) -> float:
        """Wall time so far, or the final one after ``finish()``."""
        return self.wall_time if self.wall_time is not None else self._clock() - self.started

    @property
    def records_per_second(self) -> float:
        """Records processed per second of wall time."""
        elapsed = self.elapsed
        return self.total / elapsed if elapsed > 0 else 0.0

    @property
    def exit_code(self) -> ExitCode:
        """0 all succeeded; 1 some did not, or teardown/output failed; 3 halted early
        (over 1: some input was not run); a signal's code wins; 2 when the run was
        refused before any record."""
        if self.error is not None:
            return ExitCode.USAGE
        if self.signal is not None:
            return _SIGNAL_CODES.get(self.signal, ExitCode.INTERRUPTED)
        if self.broken_pipe:
            return ExitCode.BROKEN_PIPE
        if self.halted is not None:
            return ExitCode.HALTED
        counts = self._counts
        if (
            counts["failed"]
            or counts["cancelled"]
            or counts["invalid"]
            or self.teardown_failed
            or self.output_failed
        ):
            return ExitCode.FAILED
        return ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        """The figures as ``--summary-json`` writes them."""
        interrupted = None
        if self.signal is not None:
            try:
                interrupted = signal.Signals(self.signal).name
            except ValueError:
                interrupted = str(self.signal)
        elapsed = self.elapsed
        precheck_errors = self.precheck_errors
        times = self.times
        return {
            "pipeline": self.pipeline,
            "pipeline_sha256": self.pipeline_sha256,
            "input": self.input,
            "started_at": format_utc(self.started_at),
            # From the run's own clock: ended_at - started_at is wall_time.
            "ended_at": format_utc(self.started_at + elapsed),
            "records": {"total": self.total, **self.counts, "resumed": self.resumed},
            "steps": {
                name: {
                    **counts,
                    "retries": self._retries.get(name, 0),
                    "precheck_errors": precheck_errors.get(name, {}),
                    "time": times.to_json(name),
                }
                for name, counts in self.steps.items()
            },
            "wall_time": round(elapsed, 6),
            "records_per_second": round(self.records_per_second, 3),
            "interrupted": interrupted,
            "halted": None if self.halted is None else self.halted.to_json(),
            "broken_pipe": self.broken_pipe,
            "teardown_failed": self.teardown_failed,
            "output_failed": self.output_failed,
            "exit_code": int(self.exit_code),
            "error": self.error,
            "limits": self.limits,
            "errors": self.errors,
        }

    def write_json(self, path: str | Path) -> None:
        """Write ``to_json()`` to ``path`` (``--summary-json``); raises OSError."""
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"
        Path(path).write_text(text, encoding="utf-8")

    def _step(self, name: str) -> dict[str, int]:
        counts = self._steps.get(name)
        if counts is None:
            counts = self._steps[name] = dict.fromkeys(STEP_COUNTS, 0)
        return counts


def _count_group(groups: dict[Any, _Group], key: Any, line: int | None) -> None:
    """One more record in ``groups[key]``; its first line is the lowest one seen (records
    can end out of input order)."""
    group = groups.get(key)
    if group is None:
        groups[key] = [1, line]
        return
    group[0] += 1
    if line is not None and (group[1] is None or line < group[1]):
        group[1] = line


def _group_json(group: _Group) -> dict[str, int | None]:
    return {"count": group[0], "first_line": group[1]}


def format_utc(timestamp: float) -> str:
    """Seconds since the epoch as ISO 8601 in UTC, to the microsecond.

    >>> format_utc(0.25)
    '1970-01-01T00:00:00.250000Z'
    """
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
