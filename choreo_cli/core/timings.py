"""How long the calls of each step took: a fixed-bucket histogram per step and phase.

Memory stays flat whatever the number of calls: a call adds to one bucket, the total
and the maximum. p50 and p95 are read from the buckets (linear inside the bucket, like
Prometheus's ``histogram_quantile``), exact to the bucket's width (at most 5/3 of its
lower bound); the total, the count and the maximum are exact.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from typing import Any

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

    __slots__ = ("counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0.0
        self.max = 0.0

    def add(self, duration: float) -> None:
        """One call that took ``duration`` seconds."""
        self.counts[bisect_left(BOUNDS, duration)] += 1
        self.total += duration
        if duration > self.max:
            self.max = duration

    def add_many(self, durations: Iterable[float]) -> None:
        """Calls that took ``durations`` seconds each (a worker's buffer, folded)."""
        ordered = sorted(durations)
        total = len(ordered)
        if not total:
            return
        counts, start = self.counts, 0
        for i, bound in enumerate(BOUNDS):
            end = bisect_right(ordered, bound, start)  # the durations <= bound
            counts[i] += end - start
            start = end
            if start == total:
                break
        counts[-1] += total - start
        self.total += sum(ordered)
        if ordered[-1] > self.max:
            self.max = ordered[-1]

    def merge(self, other: PhaseTimes) -> None:
        """Add the calls of ``other`` (another worker's) to these."""
        counts = self.counts
        for i, count in enumerate(other.counts):
            if count:
                counts[i] += count
        self.total += other.total
        if other.max > self.max:
            self.max = other.max

    @property
    def calls(self) -> int:
        """How many calls were timed."""
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
        """``{calls, total, p50, p95, max}``, in seconds (rounded to the microsecond)."""
        return {
            "calls": self.calls,
            "total": round(self.total, 6),
            "p50": round(self.quantile(0.5), 6),
            "p95": round(self.quantile(0.95), 6),
            "max": round(self.max, 6),
        }

    def __getstate__(self) -> tuple[list[int], float, float]:
        return self.counts, self.total, self.max

    def __setstate__(self, state: tuple[list[int], float, float]) -> None:
        self.counts, self.total, self.max = state


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
