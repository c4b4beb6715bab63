"""`limits:` in a pipeline file: the named limits, the names steps give, and ``--limit``.

The structure (rate strings, positive numbers, unknown keys) is the schema's; this module
reads what the schema let through into ``LimitDefinition``s, checks that every name a
step or a call gives is defined, and builds the core's limit objects for one run
(``build_limits``), each a worker's share when several processes share it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from choreo_cli.core.limits import format_rate, parse_rate
from choreo_cli.errors import did_you_mean

if TYPE_CHECKING:
    from choreo_cli.core.limits import Limit
    from choreo_cli.pipeline.yaml_loader import YamlPath

# Report a problem at a path of the file: (path, message, warning?).
Report = Callable[["YamlPath", str, bool], None]


@dataclasses.dataclass(frozen=True)
class LimitDefinition:
    """One limit of ``limits:``: a token bucket (``rate`` calls per second, ``burst``) or a
    concurrency limit (``concurrency``)."""

    name: str
    rate: float | None = None
    burst: int = 1
    concurrency: int | None = None
    line: int = 0

    @property
    def written(self) -> str:
        """The limit as a file would write it: ``{rate: 20/s, burst: 5}``."""
        if self.concurrency is not None:
            return f"{{concurrency: {self.concurrency}}}"
        assert self.rate is not None
        return f"{{rate: {format_rate(self.rate)}, burst: {self.burst}}}"

    def build(self, workers: int = 1) -> Limit:
        """The core's limit object: this worker's equal share when ``workers`` share it."""
        from choreo_cli.core.limits import ConcurrencyLimit, RateLimit

        if self.concurrency is not None:
            return ConcurrencyLimit(self.name, concurrency=self.concurrency, workers=workers)
        assert self.rate is not None
        return RateLimit(self.name, rate=self.rate, burst=self.burst, workers=workers)

    def share_warning(self, workers: int) -> str | None:
        """Why an equal share among ``workers`` processes is below 1, or None."""
        if workers <= 1:
            return None
        if self.concurrency is not None and self.concurrency < workers:
            return (
                f"limit '{self.name}': concurrency {self.concurrency} shared by {workers} "
                f"workers is below 1 each; each worker gets 1, so up to {workers} calls may "
                f"run at once — with the process or dask executor, use at most "
                f"{self.concurrency} workers"
            )
        if self.concurrency is None and self.burst < workers:
            return (
                f"limit '{self.name}': burst {self.burst} shared by {workers} workers is "
                f"below 1 each; each worker gets 1, so up to {workers} calls may start at "
                f"once — with the process or dask executor, give burst: {workers} or use "
                "fewer workers"
            )
        return None


def read_limits(limits: Any, line_of: Callable[[YamlPath], int]) -> dict[str, LimitDefinition]:
    """The limits of a ``limits:`` mapping that the schema check let through (others are
    left out: the schema check reported them)."""
    if not isinstance(limits, dict):
        return {}
    found: dict[str, LimitDefinition] = {}
    for name, spec in limits.items():
        if not isinstance(name, str) or not isinstance(spec, dict):
            continue
        line = line_of(("limits", name))
        concurrency = spec.get("concurrency")
        if "rate" not in spec:
            if _positive_int(concurrency) and len(spec) == 1:
                found[name] = LimitDefinition(name, concurrency=concurrency, line=line)
            continue
        rate, burst = spec.get("rate"), spec.get("burst", 1)
        if concurrency is not None or not isinstance(rate, str) or not _positive_int(burst):
            continue
        try:
            per_second = parse_rate(rate)
        except ValueError:
            continue
        found[name] = LimitDefinition(name, rate=per_second, burst=burst, line=line)
    return found


def limit_names(value: Any, path: YamlPath) -> list[tuple[str, YamlPath]]:
    """The names a ``limit:`` value gives (a name or a list of names), each with its path."""
    if isinstance(value, str):
        return [(value, path)]
    if isinstance(value, list):
        return [(v, (*path, i)) for i, v in enumerate(value) if isinstance(v, str)]
    return []


def check_names(
    value: Any, path: YamlPath, defined: Mapping[str, Any], limits_given: bool, report: Report
) -> tuple[str, ...]:
    """The names of a ``limit:`` value that ``limits:`` defines; each other one is a problem
    at its position (``limits_given``: the file has a ``limits:`` mapping, perhaps broken)."""
    kept: list[str] = []
    for name, at in limit_names(value, path):
        if name in defined:
            if name not in kept:
                kept.append(name)
        elif not limits_given:
            report(
                at,
                f"unknown limit '{name}' — define it under 'limits:' at the top of the file, "
                f"e.g. limits: {{{name}: {{rate: 20/s, burst: 5}}}}",
                False,
            )
        elif name not in defined:
            hint = did_you_mean(name, sorted(defined)) or (
                " — limits defined: " + ", ".join(sorted(defined))
                if defined
                else " — define it under 'limits:'"
            )
            report(at, f"unknown limit '{name}'{hint}", False)
    return tuple(kept)


def parse_limit_option(text: str) -> tuple[str, float]:
    """Split ``--limit NAME=RATE``; raises ValueError with a message for people.

    >>> parse_limit_option("crm_api=10/s")
    ('crm_api', 10.0)
    """
    name, sep, rate = text.partition("=")
    name = name.strip()
    if not sep or not name or not rate.strip():
        raise ValueError(f"--limit needs NAME=RATE (e.g. crm_api=10/s), got {text!r}")
    try:
        return name, parse_rate(rate)
    except ValueError as exc:
        raise ValueError(f"--limit {name}: {exc}") from None


def override_rates(
    limits: tuple[LimitDefinition, ...], rates: Mapping[str, float], *, file: str
) -> tuple[LimitDefinition, ...]:
    """``limits`` with the rates of ``--limit NAME=RATE`` put in; raises ValueError for a
    name the file does not define, or one that is a concurrency limit."""
    by_name = {limit.name: limit for limit in limits}
    for name in rates:
        limit = by_name.get(name)
        if limit is None:
            defined = ", ".join(sorted(by_name)) or "none"
            hint = did_you_mean(name, sorted(by_name))
            raise ValueError(
                f"--limit {name}: {file} has no limit named '{name}'{hint} (limits: {defined})"
            )
        if limit.concurrency is not None:
            raise ValueError(
                f"--limit {name}: '{name}' is a concurrency limit ({limit.written}), "
                "not a rate; --limit only overrides rates"
            )
    return tuple(
        dataclasses.replace(limit, rate=rates[limit.name]) if limit.name in rates else limit
        for limit in limits
    )


def build_limits(limits: tuple[LimitDefinition, ...], workers: int = 1) -> dict[str, Limit]:
    """One run's limit objects by name (each a worker's share when ``workers`` processes
    share them)."""
    return {limit.name: limit.build(workers) for limit in limits}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
