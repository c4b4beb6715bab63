"""Figures as people read them: durations in the unit that fits."""

from __future__ import annotations


def human_seconds(seconds: float) -> str:
    """Seconds in a unit a person reads at a glance.

    >>> [human_seconds(s) for s in (0, 0.0000042, 0.0123, 1.5, 75, 5400)]
    ['0 s', '4.2 µs', '12.3 ms', '1.50 s', '1 min 15 s', '1 h 30 min']
    """
    if seconds <= 0:
        return "0 s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"{hours} h {rest} min"
