"""`choreo run --metrics-file`: the run's figures in Prometheus's text format, for
node_exporter's textfile collector, replaced atomically at the end and every 15 s.

prometheus_client (about 0.1 s to import) is imported only when a file is written. Every figure comes from the summary (``RunSummary.to_json()``, described by
schemas/summary.schema.json) and its call timings; every series has a ``pipeline``
label, so the files of several pipelines can sit in one textfile directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import GaugeMetricFamily, Metric

    from choreo_cli.core.summary import RunSummary

#: Seconds between two writes during the run (design: every 15 s).
INTERVAL = 15.0
#: For tests only: another interval, in seconds (a test cannot wait 15 s for each write).
INTERVAL_VARIABLE = "CHOREO_METRICS_INTERVAL"
#: The histogram's ``le`` bounds: 1, 2 and 5 of each power of ten from 10 µs to 100 s.
#: Each is a bound of core/timings.py's buckets, so the counts at them are exact.
HISTOGRAM_BOUNDS: tuple[float, ...] = tuple(
    bound
    for bound in (float(f"{m}e{e}") for e in range(-5, 3) for m in (1, 2, 5))
    if bound <= 100.0
)
#: Record statuses, as labels of ``choreo_records_total`` (``resumed``: records an earlier
#: run finished, skipped by ``--checkpoint``).
RECORD_STATUSES = ("succeeded", "failed", "cancelled", "invalid", "resumed")
LAST_SUCCESS = "choreo_run_last_success_timestamp_seconds"
# The most of an earlier metrics file read for its last success (it is a few KiB).
_MAX_PREVIOUS_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The figures one write of the metrics file shows.

    ``figures``: ``RunSummary.to_json()``; ``started``: the run's start (seconds since the
    epoch); ``buckets``: (step, phase) -> (le bound, calls at most that long) pairs ending
    with +Inf, and the total seconds; ``final``: the run is over (the exit code is known).
    """

    figures: Mapping[str, Any]
    started: float
    buckets: Mapping[tuple[str, str], tuple[list[tuple[float, int]], float]]
    final: bool


def take_snapshot(summary: RunSummary, *, final: bool) -> Snapshot:
    """The summary's figures now. Safe from another thread than the run loop's: the summary
    reads what the loop changes through copies (see ``RunSummary``), and ``summary.times``
    is a merged copy while the run goes on."""
    figures = summary.to_json()
    buckets = {}
    for (step, phase), times in list(summary.times.phases.items()):
        counts = dict(times.cumulative())
        # The +Inf count from the same copy as the others: monotonic le counts.
        pairs = [(bound, counts[bound]) for bound in HISTOGRAM_BOUNDS]
        pairs.append((float("inf"), counts[float("inf")]))
        buckets[step, phase] = (pairs, times.total)
    return Snapshot(figures=figures, started=summary.started_at, buckets=buckets, final=final)


def build_families(
    snapshot: Snapshot, *, pipeline: str, last_success: float | None
) -> list[Metric]:
    """The metric families of ``snapshot`` (README "Metrics and report" names them).

    ``last_success``: the end of the last run that exited 0 (this one's when it did,
    else what the previous file said), None when unknown.
    """
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        HistogramMetricFamily,
    )

    figures = snapshot.figures
    records = figures.get("records", {})
    steps: Mapping[str, Mapping[str, Any]] = figures.get("steps", {})
    errors = figures.get("errors")
    labels = [pipeline]

    records_total = CounterMetricFamily(
        "choreo_records_total",
        "Records of the run by status (resumed: finished by an earlier run, skipped by --checkpoint).",
        labels=["pipeline", "status"],
    )
    for status in RECORD_STATUSES:
        records_total.add_metric([*labels, status], records.get(status, 0))

    calls = CounterMetricFamily(
        "choreo_step_calls_total",
        "Calls of each step's precheck and job by outcome "
        "(job: succeeded, failed, cancelled; precheck: passed, skipped, error).",
        labels=["pipeline", "step", "phase", "outcome"],
    )
    duration = HistogramMetricFamily(
        "choreo_step_duration_seconds",
        "How long each call of a step's precheck or job took (a retried job's attempts, and its waits for limits, together; fast calls sampled).",
        labels=["pipeline", "step", "phase"],
    )
    retries = CounterMetricFamily(
        "choreo_retries_total",
        "Attempts of each step's job past the first (retry:).",
        labels=["pipeline", "step"],
    )
    for step, counts in steps.items():
        for phase, outcome, value in step_call_outcomes(counts, errors, step=step):
            calls.add_metric([*labels, step, phase, outcome], value)
        for phase in ("precheck", "job"):
            timed = snapshot.buckets.get((step, phase))
            if timed is None or not timed[0][-1][1]:
                continue
            pairs, total = timed
            duration.add_metric(
                [*labels, step, phase],
                [(_le(bound), count) for bound, count in pairs],
                sum_value=total,
            )
        retries.add_metric([*labels, step], counts.get("retries", 0))

    waited = CounterMetricFamily(
        "choreo_limit_wait_seconds_total",
        "Seconds calls spent waiting for each limit (limits:), summed over the calls.",
        labels=["pipeline", "limit"],
    )
    for name, figure in figures.get("limits", {}).items():
        waited.add_metric([*labels, name], figure.get("wait_seconds", 0.0))

    run_labels = ["pipeline"]
    wall_time = float(figures.get("wall_time", 0.0))
    # A family without samples (no call timed, no limit) is left out.
    families: list[Metric] = [
        family for family in (records_total, calls, duration, retries, waited) if family.samples
    ]
    families.append(
        _gauge(
            "choreo_run_duration_seconds",
            "Seconds from the start of the run to now (to its end, once it ended).",
            run_labels,
            labels,
            wall_time,
        )
    )
    families.append(
        _gauge(
            "choreo_run_start_timestamp_seconds",
            "When the run started, in seconds since the epoch.",
            run_labels,
            labels,
            snapshot.started,
        )
    )
    exit_code = figures.get("exit_code")
    if snapshot.final and exit_code is not None:
        families.append(
            _gauge(
                "choreo_run_exit_code",
                "The exit code of the run (0: every record succeeded; see choreo run --help).",
                run_labels,
                labels,
                exit_code,
            )
        )
    if snapshot.final and exit_code == 0:
        last_success = snapshot.started + wall_time
    if last_success is not None:
        families.append(
            _gauge(
                LAST_SUCCESS,
                "When the last run that exited 0 ended, in seconds since the epoch "
                "(carried over from the file a failed run found).",
                run_labels,
                labels,
                last_success,
            )
        )
    return families


def step_call_outcomes(
    counts: Mapping[str, Any], errors: Iterable[Mapping[str, Any]] | None, *, step: str
) -> Iterator[tuple[str, str, int]]:
    """(phase, outcome, calls) of ``step``, from its summary figures (``counts``) and the
    run's error groups (``errors``: the summary's top-level ``errors``, None when absent).

    job: ``failed`` and ``cancelled`` the records whose job raised (``Cancel`` for
    cancelled: the error groups of the step's job), ``succeeded`` the rest of ``ran``.
    precheck: ``error`` the prechecks that raised something other than Skip or Cancel
    (``precheck_errors``) or timed out, ``cancelled`` those that raised Cancel,
    ``skipped`` those that raised Skip, ``passed`` the other calls (only when the calls
    were timed).
    """
    ran, failed, cancelled, skipped = (
        int(counts.get(key, 0)) for key in ("ran", "failed", "cancelled", "skipped")
    )
    ended = _ended_by(errors, step)
    if errors is not None:
        failed, cancelled = ended["job", "failed"], ended["job", "cancelled"]
    yield "job", "succeeded", max(ran - failed - cancelled, 0)
    yield "job", "failed", failed
    yield "job", "cancelled", cancelled
    timing = (counts.get("time") or {}).get("precheck")
    raised = sum(int(entry.get("count", 0)) for entry in counts.get("precheck_errors", {}).values())
    # Those that failed their record (precheck_errors: fail) are not among the skips.
    skipped_by_errors = max(raised - ended["precheck", "failed"], 0)
    outcomes = {
        "skipped": max(skipped - skipped_by_errors, 0),
        "error": raised + ended["precheck", "timeout"],
        "cancelled": ended["precheck", "cancelled"],
    }
    if timing is None and not any(outcomes.values()):
        return  # no precheck, or none called
    if timing is not None:
        yield "precheck", "passed", max(int(timing.get("calls", 0)) - sum(outcomes.values()), 0)
    for outcome, value in outcomes.items():
        yield "precheck", outcome, value


_CANCEL_TYPES = ("Cancel",)


def _ended_by(errors: Iterable[Mapping[str, Any]] | None, step: str) -> dict[tuple[str, str], int]:
    """Records ``step`` ended, by (phase, how): ``failed``, ``cancelled`` (Cancel) and, for
    a precheck, ``timeout`` (StepTimeout, not among ``failed``)."""
    ended = dict.fromkeys(
        [("job", "failed"), ("job", "cancelled"), ("precheck", "failed"),
         ("precheck", "cancelled"), ("precheck", "timeout")],
        0,
    )  # fmt: skip
    for group in errors or ():
        phase = group.get("phase")
        if group.get("step") != step or phase not in ("precheck", "job"):
            continue
        kind = group.get("type")
        if kind == "UnassignableInput":
            continue  # the record did not fit the callable: it was not called
        how = "cancelled" if kind in _CANCEL_TYPES else "failed"
        if phase == "precheck" and kind == "StepTimeout":
            how = "timeout"
        ended[phase, how] += int(group.get("count", 0))
    return ended


def _le(bound: float) -> str:
    """A bucket's ``le`` label as Prometheus writes it (``1e-05``, ``0.5``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(bound)


def _gauge(
    name: str, documentation: str, label_names: list[str], labels: list[str], value: float
) -> GaugeMetricFamily:
    from prometheus_client.metrics_core import GaugeMetricFamily

    gauge = GaugeMetricFamily(name, documentation, labels=label_names)
    gauge.add_metric(labels, value)
    return gauge


def render(snapshot: Snapshot, *, pipeline: str, last_success: float | None) -> bytes:
    """The text of the metrics file for ``snapshot``."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import Collector

    class Families(Collector):
        def __init__(self, families: Iterable[Metric]) -> None:
            self._families = list(families)

        def collect(self) -> Iterable[Metric]:
            return iter(self._families)

    families = build_families(snapshot, pipeline=pipeline, last_success=last_success)
    return generate_latest(Families(families))


@dataclasses.dataclass(frozen=True)
class Previous:
    """What the metrics file that a previous run left says: its last success (seconds since
    the epoch) and its pipeline label, each None when it has none."""

    last_success: float | None = None
    pipeline: str | None = None

    @classmethod
    def read(cls, path: Path) -> Previous:
        """The previous file at ``path``; an empty Previous when there is none, or it cannot
        be read or parsed (it never stops a run)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                return cls()  # a FIFO would wait for a writer
            with open(path, "rb") as stream:
                text = stream.read(_MAX_PREVIOUS_BYTES).decode("utf-8")
            families = list(text_string_to_metric_families(text))
        except Exception:  # any damage: the file is only a hint
            return cls()
        last_success: float | None = None
        pipeline: str | None = None
        for family in families:
            for sample in family.samples:
                pipeline = pipeline or sample.labels.get("pipeline")
                if sample.name == LAST_SUCCESS and (
                    last_success is None or sample.value > last_success
                ):
                    last_success = sample.value
        return cls(last_success=last_success, pipeline=pipeline)


class MetricsFile:
    """The ``--metrics-file`` of one run: replaced atomically at each write.

    ``pipeline``: the pipeline's label (its ``name:``, else the file's stem); None when the
    pipeline was not loaded (exit 2): then the label the previous file had, else the
    pipeline file's stem, so that a refused run's series are the same as the last run's.
    """

    def __init__(self, path: Path, *, pipeline: str | None, pipeline_path: Path) -> None:
        self.path = path
        # Read before the first write replaces it.
        self.previous = Previous.read(path)
        self.pipeline = pipeline or self.previous.pipeline or pipeline_path.stem
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def write(self, summary: RunSummary, *, final: bool = True) -> None:
        """Write the summary's figures now; raises OSError."""
        snapshot = take_snapshot(summary, final=final)
        data = render(snapshot, pipeline=self.pipeline, last_success=self.previous.last_success)
        with self._lock:
            if final:
                self._stopped.set()
            elif self._stopped.is_set():
                return  # the final write was made (or is on its way): never write over it
            replace_file(self.path, data)

    def start(self, summary: RunSummary, *, interval: float | None = None) -> None:
        """Write the figures every ``interval`` seconds (default: ``INTERVAL``, or the test
        variable) from a daemon thread, until ``stop()``."""
        every = interval if interval is not None else interval_from_environment()
        thread = threading.Thread(
            target=self._write_every, args=(summary, every), name="choreo-metrics", daemon=True
        )
        thread.start()
        self._thread = thread

    def stop(self) -> None:
        """Stop the periodic writes (a write under way ends first)."""
        self._stopped.set()
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None

    def _write_every(self, summary: RunSummary, interval: float) -> None:
        while not self._stopped.wait(interval):
            # A failed write is tried again at the next tick; the final write says why
            # it fails, if it still does.
            with contextlib.suppress(Exception):
                self.write(summary, final=False)


def interval_from_environment() -> float:
    """``INTERVAL``, or the seconds in ``CHOREO_METRICS_INTERVAL`` (for tests) when positive."""
    text = os.environ.get(INTERVAL_VARIABLE)
    if text:
        with contextlib.suppress(ValueError):
            value = float(text)
            if 0 < value < float("inf"):
                return value
    return INTERVAL


def replace_file(path: Path, data: bytes) -> None:
    """Put ``data`` in ``path`` atomically: a temporary file in the same directory, synced,
    then renamed over it (a reader sees the old file or the new one, never a part).

    The temporary file's name starts with a dot and does not end in ``.prom``: the
    textfile collector never reads it. It is removed when anything fails. A symlink is
    followed (the file it leads to is replaced); a path that is not a regular file (a
    device, a pipe) is written in place. Raises OSError.
    """
    target = Path(os.path.realpath(path))
    try:
        info: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        with open(target, "wb") as stream:
            stream.write(data)
        return
    # The mode an ordinary new file gets, or the one of the file replaced.
    mode = 0o644 if info is None else stat.S_IMODE(info.st_mode)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with open(descriptor, "wb") as stream:
            os.fchmod(descriptor, mode)
            stream.write(data)
            stream.flush()
            os.fsync(descriptor)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_directory(target.parent)


def _sync_directory(directory: Path) -> None:
    """Make the rename durable (best effort: some file systems refuse)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def write_metrics(
    metrics: MetricsFile, summary: RunSummary, *, report: Callable[[str], None]
) -> None:
    """The final write; a failure is given to ``report`` (a message for stderr)."""
    try:
        metrics.write(summary, final=True)
    except OSError as exc:
        report(f"cannot write metrics to {metrics.path}: {exc.strerror or exc}")
