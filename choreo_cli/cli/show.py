"""`choreo show PIPELINE`: print a pipeline's steps as a table, or as JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from choreo_cli.core.exit_codes import ExitCode

if TYPE_CHECKING:
    from choreo_cli.cli.streams import Streams
    from choreo_cli.pipeline.definitions import CallDefinition, Pipeline
    from choreo_cli.pipeline.limits import LimitDefinition

# The line of `choreo --help`'s command list, and the end of this command's --help (\b
# keeps the lines as they are).
SHORT_HELP = "Print a pipeline's steps as a table, or as JSON."
EXAMPLES = """\b
Examples:
  choreo show pipeline.yaml
  choreo show pipeline.yaml --format json
"""


class ShowFormat(str, Enum):
    """How `choreo show` prints the pipeline."""

    TABLE = "table"
    JSON = "json"


def show(
    ctx: typer.Context,
    pipeline_file: Annotated[str, typer.Argument(metavar="PIPELINE", help="The pipeline file.")],
    show_format: Annotated[
        ShowFormat,
        typer.Option("--format", "-f", help="table (for people) or json.", case_sensitive=False),
    ] = ShowFormat.TABLE,
) -> ExitCode:
    """Print the steps of a pipeline: name, precheck, job and their with: arguments.

    Imports no user code, and shows ${VAR}s as written.
    """
    from choreo_cli.cli.console import build_console
    from choreo_cli.cli.escapes import json_text
    from choreo_cli.cli.streams import streams_of
    from choreo_cli.pipeline.loader import read_pipeline_structure

    streams = streams_of(ctx)
    console = build_console(streams)
    pipeline, problems = read_pipeline_structure(pipeline_file)
    for problem in problems:
        console.error(str(problem), prefix=False)
    if pipeline is None or any(p.is_error for p in problems):
        console.error(
            f"{pipeline_file}: not a usable pipeline file — see choreo validate", prefix=False
        )
        return ExitCode.USAGE
    if show_format is ShowFormat.JSON:
        streams.stdout.write(json_text(describe(pipeline), default=str) + "\n")
    else:
        _print_table(pipeline, streams)
    return ExitCode.OK


def describe(pipeline: Pipeline) -> dict[str, Any]:
    """A pipeline as JSON-ready data (what `choreo show --format json` prints)."""

    def call(definition: CallDefinition | None) -> dict[str, Any] | None:
        if definition is None:
            return None
        return {"call": definition.reference, "with": dict(definition.with_)}

    return {
        "file": str(pipeline.path),
        "name": pipeline.name,
        "description": pipeline.description,
        "workers": pipeline.workers,
        "max_workers": pipeline.max_workers,
        "precheck_errors": pipeline.precheck_errors,
        "halt": None
        if pipeline.halt is None
        else {
            "failures": pipeline.halt.failures
            if pipeline.halt.percent is None
            else pipeline.halt.describe_failures(),
            "min_records": pipeline.halt.min_records,
            "consecutive": pipeline.halt.consecutive,
        },
        "context": dict(pipeline.values),
        "resources": [
            {
                "name": r.name,
                "factory": r.factory.reference,
                "with": dict(r.factory.with_),
                "scope": r.scope,
            }
            for r in pipeline.resources
        ],
        "limits": {limit.name: _limit(limit) for limit in pipeline.limits},
        "steps": [
            {
                "name": s.name,
                "description": s.description,
                "precheck": call(s.precheck),
                "job": call(s.job),
                "retry": None
                if s.retry is None
                else {
                    "attempts": s.retry.attempts,
                    "delay": s.retry.delay,
                    "backoff": s.retry.backoff,
                    "max_delay": s.retry.max_delay,
                    # As written (read without importing, the policy lacks 'module:Class'
                    # entries); without on:, a job is retried on any Exception.
                    "on": list(s.retry_on) or ["Exception"],
                },
                "timeout": s.timeout,
                "limits": {"precheck": list(s.precheck_limits), "job": list(s.job_limits)},
            }
            for s in pipeline.steps
        ],
    }


def _limit(limit: LimitDefinition) -> dict[str, Any]:
    """A limit as written: ``{rate, burst}`` (the rate in its most readable unit) or
    ``{concurrency}``."""
    if limit.concurrency is not None:
        return {"concurrency": limit.concurrency}
    from choreo_cli.core.limits import format_rate

    assert limit.rate is not None
    return {"rate": format_rate(limit.rate), "burst": limit.burst}


def _print_table(pipeline: Pipeline, streams: Streams) -> None:
    from choreo_cli.cli.console import Cell, print_table

    rows: list[tuple[Cell, ...]] = []
    limited = any(step.precheck_limits or step.job_limits for step in pipeline.steps)
    for step in pipeline.steps:
        arguments = []
        if step.precheck is not None and step.precheck.with_:
            arguments.append(f"precheck: {_inline(step.precheck.with_)}")
        if step.job.with_:
            arguments.append(f"job: {_inline(step.job.with_)}")
        precheck = "" if step.precheck is None else step.precheck.reference
        row: tuple[Cell, ...] = (step.name, precheck, step.job.reference, tuple(arguments))
        if limited:
            waits = [f"precheck: {', '.join(step.precheck_limits)}"] if step.precheck_limits else []
            waits += [f"job: {', '.join(step.job_limits)}"] if step.job_limits else []
            row += (tuple(waits),)
        rows.append(row)
    print_table(
        streams,
        title=pipeline.name or str(pipeline.path),
        caption=_caption(pipeline),
        columns=("step", "precheck", "job", "with", *(("limit",) if limited else ())),
        rows=rows,
    )


def _caption(pipeline: Pipeline) -> str | None:
    """The description, then what protects the target: limits, max_workers, halt, and
    ``precheck_errors: fail`` (the default, skip, goes without saying)."""
    lines = [pipeline.description] if pipeline.description else []
    for limit in pipeline.limits:
        written = _limit(limit)
        said = ", ".join(f"{key} {value}" for key, value in written.items())
        lines.append(f"limit {limit.name}: {said}")
    if pipeline.max_workers is not None:
        lines.append(f"max_workers: {pipeline.max_workers}")
    if pipeline.halt is not None:
        halt = pipeline.halt
        parts = []
        if halt.describe_failures() is not None:
            parts.append(f"failures {halt.describe_failures()} (after {halt.min_records} records)")
        if halt.consecutive:
            parts.append(f"{halt.consecutive} consecutive failures")
        lines.append("halt: " + ", ".join(parts))
    if pipeline.precheck_errors == "fail":
        lines.append("precheck_errors: fail")
    return "\n".join(lines) or None


def _inline(values: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in values.items()
    )
