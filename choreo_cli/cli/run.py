"""`choreo run PIPELINE`: options in, a RunOptions object, the run, an exit code out."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from choreo_cli.cli.run_options import MAX_LINE_BYTES, MAX_WORKERS, RunOptions
from choreo_cli.core.exit_codes import ExitCode

__all__ = ["EXAMPLES", "SHORT_HELP", "ExecutorName", "RunOptions", "run"]

# The line of `choreo --help`'s command list, and the end of `choreo run --help` (\b keeps
# the lines as they are).
SHORT_HELP = "Run a pipeline over every record of a JSON Lines input."
EXAMPLES = """\b
Examples:
  choreo run pipeline.yaml -i records.jsonl -o results.jsonl
  choreo run pipeline.yaml -i records.jsonl --dry-run
  cat records.jsonl | choreo run pipeline.yaml -w 16 --unordered --rejects rejects.jsonl
"""


class ExecutorName(str, enum.Enum):
    """Where records run (README "Scaling out")."""

    thread = "thread"
    process = "process"
    dask = "dask"


class PrecheckErrors(str, enum.Enum):
    """What a precheck that raises something other than Skip does to its record."""

    skip = "skip"
    fail = "fail"


def _check_failures(value: str | None) -> str | None:
    """``--max-failures``: N or P%, or a usage error (exit 2) saying how to write it."""
    if value is None:
        return None
    from choreo_cli.core.budget import parse_failures

    try:
        parse_failures(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def run(
    ctx: typer.Context,
    pipeline: Annotated[
        Path, typer.Argument(metavar="PIPELINE", help="The pipeline file.", show_default=False)
    ],
    input: Annotated[
        str, typer.Option("--input", "-i", metavar="PATH", help="JSON Lines input; - is stdin.")
    ] = "-",
    output: Annotated[
        str,
        typer.Option("--output", "-o", metavar="PATH", help="Result lines go here; - is stdout."),
    ] = "-",
    workers: Annotated[
        Optional[int],  # noqa: UP045 - typer reads the annotation at run time on 3.10
        typer.Option(
            "--workers",
            "-w",
            min=1,
            max=MAX_WORKERS,
            help="Records run at once (default: the pipeline's workers).",
        ),
    ] = None,
    ordered: Annotated[
        bool,
        typer.Option("--ordered/--unordered", help="Write results in input order, or as they end."),
    ] = True,
    fail_fast: Annotated[
        bool,
        typer.Option("--fail-fast", help="Start no new record after one did not succeed (exit 3)."),
    ] = False,
    set_values: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Set a context value (VALUE read as a YAML scalar); repeatable.",
        ),
    ] = None,
    include_input: Annotated[
        bool, typer.Option("--include-input", help='Add each record as "input" to its line.')
    ] = False,
    include_data: Annotated[
        bool, typer.Option("--include-data", help='Add the data bag as "data" to each line.')
    ] = False,
    progress: Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar on stderr (default: only when stderr is a terminal).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No summary or progress on stderr: only warnings, errors and the notice "
            "of a halt or an interruption.",
        ),
    ] = False,
    summary_json: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--summary-json", metavar="PATH", help="Also write the summary as JSON."),
    ] = None,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level", metavar="LEVEL", help="Level of ctx.log messages shown: DEBUG, INFO..."
        ),
    ] = "WARNING",
    rejects: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--rejects",
            metavar="PATH",
            help="Write the input line of every record that did not succeed (re-runnable).",
        ),
    ] = None,
    checkpoint: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--checkpoint",
            metavar="PATH",
            help="Mark finished records in PATH; a rerun skips them (needs --input FILE).",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Build resources and run prechecks; call no job."),
    ] = False,
    executor: Annotated[
        ExecutorName,
        typer.Option(
            "--executor",
            help="thread (I/O-bound steps, async), process (CPU-bound), dask (a cluster).",
        ),
    ] = ExecutorName.thread,
    scheduler: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--scheduler",
            metavar="ADDRESS",
            help="A Dask scheduler (tcp://host:8786) for --executor dask; default: a local cluster.",
        ),
    ] = None,
    max_line_bytes: Annotated[
        int,
        typer.Option(
            "--max-line-bytes",
            metavar="N",
            min=1,
            help="A longer input line is an invalid record, skipped without being held in memory.",
        ),
    ] = MAX_LINE_BYTES,
    max_failures: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--max-failures",
            metavar="N|P%",
            callback=_check_failures,
            help="Halt (exit 3) once N records failed, or P% of those that ended "
            "(overrides the file's halt: failures).",
        ),
    ] = None,
    max_consecutive_failures: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--max-consecutive-failures",
            metavar="K",
            min=1,
            help="Halt (exit 3) once K records in a row failed (overrides halt: consecutive).",
        ),
    ] = None,
    limit_values: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--limit",
            metavar="NAME=RATE",
            help="Override the rate of the file's limit NAME for this run (N/s, N/min or "
            "N/h); repeatable.",
        ),
    ] = None,
    precheck_errors: Annotated[
        Optional[PrecheckErrors],  # noqa: UP045
        typer.Option(
            "--precheck-errors",
            help="A precheck that raises something other than Skip: skip the job (and "
            "warn) or fail the record (overrides the file's precheck_errors:).",
            show_default=False,
        ),
    ] = None,
    metrics_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--metrics-file",
            metavar="PATH",
            help="Write Prometheus metrics to PATH (textfile collector) every 15 s and at the end.",
        ),
    ] = None,
    report: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--report",
            metavar="PATH",
            help="Write a Markdown report of the run (also appended to $GITHUB_STEP_SUMMARY).",
        ),
    ] = None,
) -> ExitCode:
    """Run the pipeline over every record of a JSON Lines input; one result line per record.

    Exit 0 when every record succeeded, 1 when one did not, 2 when the command line, the
    pipeline or the input is unusable, 3 when --fail-fast or a failure budget halted the
    run early, 130/143 when interrupted, 141 when stdout closed.
    """
    from choreo_cli.cli.run_session import execute
    from choreo_cli.cli.streams import streams_of

    options = RunOptions(
        pipeline=pipeline,
        input=input,
        output=output,
        workers=workers,
        ordered=ordered,
        fail_fast=fail_fast,
        set_values=tuple(set_values or ()),
        include_input=include_input,
        include_data=include_data,
        progress=progress,
        quiet=quiet,
        summary_json=summary_json,
        log_level=log_level,
        rejects=rejects,
        checkpoint=checkpoint,
        dry_run=dry_run,
        executor=executor.value,
        scheduler=scheduler,
        max_line_bytes=max_line_bytes,
        max_failures=max_failures,
        max_consecutive_failures=max_consecutive_failures,
        limit_values=tuple(limit_values or ()),
        precheck_errors=None if precheck_errors is None else precheck_errors.value,
        metrics_file=metrics_file,
        report=report,
    )
    return execute(options, streams=streams_of(ctx))
