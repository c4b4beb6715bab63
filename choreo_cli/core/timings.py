"""How long the calls of each step took: a fixed-bucket histogram per step and phase.

Memory stays flat whatever the number of calls: a call adds to one bucket, the total
and the maximum. p50 and p95 are read from the buckets (linear inside the bucket, like
Prometheus's ``histogram_quantile``), exact to the bucket's width (at most 5/3 of its
lower bound).

Which calls are timed (the runners in compiled.py and interpreted.py ask ``begin`` and
``note``): reading the clock costs about as much as a trivial call, so timing every call
of a step that takes a microsecond would slow a run by a fifth. A worker times every
record while its calls are slow (one took ``SLOW`` or more on the last record timed),
which is what a load against an API or a database does: there every figure is exact.
While its calls are fast it times fewer and fewer records, down to one in ``EVERY`` on
average; each stands for itself and the records run since the last one timed (its
calls count that many times): ``calls`` and
``total`` are then estimates, ``timed`` says how many calls were measured, and ``max`` is
the longest call measured.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from random import randint
from typing import Any, Protocol

#: The buckets' upper bounds in seconds (a call of exactly a bound is in its bucket):
#: 1, 1.5, 2, 3, 5 and 7 of each power of ten from 1 µs to 1000 s. The last bucket
#: (over 1000 s) has no bound.
BOUNDS: tuple[float, ...] = (
    *(
        float(f"{mantissa}e{exponent}")
        for exponent in range(-6, 3)
        for mantissa in (1, 1.5, 2, 3, 5, 7)
    ),
    1000.0,
)

PHASES = ("precheck", "job")

#: While a worker's calls are fast, one record in EVERY (on average) is timed.
EVERY = 128
_EVERY_BITS = EVERY.bit_length() - 1
#: A worker's records are all timed until this many in a row had no slow call.
STEADY = 8
#: A call this long (seconds) or longer has every record of its worker timed until the
#: worker's calls are fast again: timing costs under 1% of such a record.
SLOW = 50e-6


class PhaseTimes:
    """The durations of one phase (precheck or job) of one step: counts by bucket, the
    total and the maximum.

    >>> times = PhaseTimes()
    >>> for duration in (0.001, 0.002, 0.004):
    ...     times.add(duration)
    >>> times.calls, round(times.total, 6), times.max
    (3, 0.007, 0.004)
    >>> times.to_json()["p50"]
    0.00175
    """

    __slots__ = ("counts", "max", "timed", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0.0
        self.max = 0.0
        self.timed = 0

    def add(self, duration: float, weight: int = 1) -> None:
        """One call that took ``duration`` seconds, standing for ``weight`` calls."""
        self.counts[bisect_left(BOUNDS, duration)] += weight
        self.total += duration * weight
        self.timed += 1
        if duration > self.max:
            self.max = duration

    def merge(self, other: PhaseTimes) -> None:
        """Add the calls of ``other`` (another worker's) to these."""
        counts = self.counts
        for i, count in enumerate(other.counts):
            if count:
                counts[i] += count
        self.total += other.total
        self.timed += other.timed
        if other.max > self.max:
            self.max = other.max

    @property
    def calls(self) -> int:
        """How many calls there were: exact when each was timed, else an estimate."""
        return sum(self.counts)

    def quantile(self, q: float) -> float:
        """The duration under which a share ``q`` of the calls ended (0 without calls)."""
        calls = self.calls
        if not calls:
            return 0.0
        rank = q * calls
        seen = 0
        for i, count in enumerate(self.counts):
            if count and seen + count >= rank:
                low = BOUNDS[i - 1] if i else 0.0
                high = BOUNDS[i] if i < len(BOUNDS) else self.max
                value = low + (high - low) * ((rank - seen) / count)
                return min(value, self.max)
            seen += count
        return self.max

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """(upper bound, calls that took at most that long) per bucket, ending with
        ``(inf, calls)``: a Prometheus histogram's ``le`` buckets."""
        seen = 0
        for bound, count in zip((*BOUNDS, float("inf")), self.counts, strict=True):
            seen += count
            yield bound, seen

    def to_json(self) -> dict[str, Any]:
        """``{calls, timed, total, p50, p95, max}``, in seconds (rounded to the nanosecond)."""
        return {
            "calls": self.calls,
            "timed": self.timed,
            "total": round(self.total, 9),
            "p50": round(self.quantile(0.5), 9),
            "p95": round(self.quantile(0.95), 9),
            "max": round(self.max, 9),
        }

    def __getstate__(self) -> tuple[list[int], float, float, int]:
        return self.counts, self.total, self.max, self.timed

    def __setstate__(self, state: tuple[list[int], float, float, int]) -> None:
        self.counts, self.total, self.max, self.timed = state


class Timed(Protocol):
    """What ``begin`` and ``note`` keep on a worker (core.workers.Worker)."""

    times: StepTimes
    countdown: int
    weight: int
    streak: int


def begin(worker: Timed) -> int:
    """A record whose calls are timed starts on ``worker``: the weight of its calls (the
    records it stands for: itself and those run untimed since the last one timed).

    The records after it are timed too until ``STEADY`` records in a row had no slow
    call (``note``); then the gaps between timed records grow, twice as long each time
    up to ``EVERY`` on average. A gap is drawn at random around its mean, so a load whose
    records follow a pattern (every other one skipping the slow job) is not sampled on
    one side of it only.
    """
    weight = worker.weight
    streak = worker.streak = worker.streak + 1
    gap = 1
    if streak > STEADY:
        mean = min(1 << min(streak - STEADY, _EVERY_BITS), EVERY)
        gap = randint(1, 2 * mean - 1)
    worker.countdown = gap - 1
    worker.weight = gap
    return weight


def note(worker: Timed, key: tuple[str, str], duration: float, weight: int) -> None:
    """A timed call of ``key`` (step name, phase) took ``duration`` seconds, standing for
    ``weight`` calls. A slow one has the worker's next record timed too."""
    times = worker.times.phases.get(key)
    if times is None:
        times = worker.times.phase(*key)
    times.add(duration, weight)
    if duration >= SLOW:
        worker.streak = 0
        worker.countdown = 0
        worker.weight = 1


class StepTimes:
    """PhaseTimes per step and phase; what a worker sends back and the summary keeps."""

    __slots__ = ("phases",)

    def __init__(self) -> None:
        #: (step name, phase) -> PhaseTimes.
        self.phases: dict[tuple[str, str], PhaseTimes] = {}

    def phase(self, step: str, phase: str) -> PhaseTimes:
        """The PhaseTimes of ``step``'s ``phase``, made when first asked for."""
        key = (step, phase)
        times = self.phases.get(key)
        if times is None:
            times = self.phases[key] = PhaseTimes()
        return times

    def merge(self, other: StepTimes) -> None:
        """Add ``other``'s calls (another worker's) to these."""
        for (step, phase), times in list(other.phases.items()):
            self.phase(step, phase).merge(times)

    def get(self, step: str, phase: str) -> PhaseTimes | None:
        """The PhaseTimes of ``step``'s ``phase``, or None when none of its calls was timed."""
        return self.phases.get((step, phase))

    def to_json(self, step: str) -> dict[str, Any]:
        """``{"precheck": ..., "job": ...}`` for ``step`` (None: no call timed)."""
        out: dict[str, Any] = {}
        for phase in PHASES:
            times = self.phases.get((step, phase))
            out[phase] = None if times is None or not times.calls else times.to_json()
        return out
