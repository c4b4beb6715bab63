"""`choreo run --report`: a Markdown report of the run, also appended to GitHub Actions'
job summary (``$GITHUB_STEP_SUMMARY``) when that is set.

Built from ``RunSummary.to_json()`` (schemas/summary.schema.json). Every text that comes
from a file, a record or an exception is escaped: control characters as ``printable``
shows them, and the characters Markdown or HTML would read (``|`` in a table cell, a
backtick, ``<``...) with a backslash.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from choreo_cli.cli.escapes import printable
from choreo_cli.cli.units import human_seconds

if TYPE_CHECKING:
    from choreo_cli.cli.console import Console
    from choreo_cli.cli.metrics import MetricsFile
    from choreo_cli.cli.run_options import RunOptions
    from choreo_cli.core.summary import RunSummary

#: The environment variable GitHub Actions sets to the file of the job's summary.
GITHUB_STEP_SUMMARY = "GITHUB_STEP_SUMMARY"
#: The most error groups listed.
TOP_ERRORS = 10

# Characters that Markdown (CommonMark, GitHub's tables) or HTML reads anywhere in a line;
# CommonMark lets a backslash escape any ASCII punctuation.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~&])")
# What starts a block at the start of a line (a heading, a list, a rule, a quote).
_LINE_START = re.compile(r"^(?:[#+=-]|\d+(?=[.)]))")

EXIT_MEANINGS = {
    0: "every record succeeded",
    1: "some records did not succeed (or an output or a resource's teardown failed)",
    2: "refused before any record ran",
    3: "halted early: some input was not run",
    130: "interrupted (SIGINT)",
    141: "the output was closed (broken pipe)",
    143: "terminated (SIGTERM)",
}
_STATUSES = ("succeeded", "failed", "cancelled", "invalid", "resumed")


def markdown_text(text: object) -> str:
    r"""``text`` for a Markdown line or table cell: control characters escaped (a new line
    is ``\n``), Markdown's and HTML's characters behind a backslash.

    >>> markdown_text("a|b\n<i>`x`</i>")
    'a\\|b\\\\n\\<i\\>\\`x\\`\\</i\\>'
    >>> markdown_text("# 1. not a heading"), markdown_text("1. not a list")
    ('\\# 1. not a heading', '1\\. not a list')
    """
    escaped = _MARKDOWN.sub(r"\\\1", printable(str(text)))
    # A text that starts a line or a cell must not start a block.
    match = _LINE_START.match(escaped)
    if match is None:
        return escaped
    if match.group()[0].isdigit():
        end = match.end()
        return f"{escaped[:end]}\\{escaped[end:]}"
    return "\\" + escaped


def render_report(figures: Mapping[str, Any], *, pipeline: str) -> str:
    """The Markdown report of a run, from its ``figures`` (``RunSummary.to_json()``);
    ``pipeline``: the pipeline's name for the heading."""
    code = int(figures.get("exit_code", 0))
    meaning = EXIT_MEANINGS.get(code, "see choreo run --help")
    lines = [f"## choreo run `{_code_span(pipeline)}`: exit {code}, {meaning}", ""]
    lines += _run_lines(figures)
    error = figures.get("error")
    if error is not None:
        lines += ["### Refused", ""]
        lines += [f"> {markdown_text(line)}" for line in str(error).splitlines() or [""]]
        lines.append("")
        return "\n".join(lines)
    lines += _records_table(figures.get("records", {}))
    lines += _steps_table(figures.get("steps", {}))
    lines += _errors_table(figures.get("errors", []))
    lines += _precheck_errors_table(figures.get("steps", {}))
    lines += _limits_table(figures.get("limits", {}))
    return "\n".join(lines)


def _run_lines(figures: Mapping[str, Any]) -> list[str]:
    """Which file ran over which input, when, how long; how the run ended early, if it did."""
    pipeline = figures.get("pipeline")
    source = figures.get("input")
    read = "standard input" if source == "-" else f"`{_code_span(source or '?')}`"
    lines = [
        f"Pipeline file `{_code_span(pipeline or '?')}`, input {read}; "
        f"started {markdown_text(figures.get('started_at', '?'))}, "
        f"wall time {human_seconds(float(figures.get('wall_time', 0.0)))}, "
        f"{float(figures.get('records_per_second', 0.0)):,.0f} records/s.",
        "",
    ]
    halted = figures.get("halted")
    if halted:
        # The reason names the line already.
        lines += [f"**Halted:** {markdown_text(halted.get('reason', ''))}", ""]
    if figures.get("interrupted"):
        lines += [f"**Interrupted** by {markdown_text(figures['interrupted'])}.", ""]
    if figures.get("broken_pipe"):
        lines += ["**Broken pipe:** the reader of the result lines went away.", ""]
    if figures.get("teardown_failed"):
        lines += ["**Teardown failed:** results may not be durable.", ""]
    if figures.get("output_failed"):
        lines += ["**Output failed:** some output could not be written.", ""]
    return lines


def _records_table(records: Mapping[str, Any]) -> list[str]:
    rows = [[status, _count(records.get(status, 0))] for status in _STATUSES]
    rows.append(["**total**", f"**{_count(records.get('total', 0))}**"])
    return ["### Records", "", *table(["Status", "Records"], rows, right=(1,)), ""]


def _steps_table(steps: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not steps:
        return []
    dry = any(counts.get("would_run") for counts in steps.values())
    header = ["Step", "Ran", "Skipped", "Failed", "Cancelled", "Retries"]
    if dry:
        header.append("Would run")
    header += ["Precheck p50 / p95 / max (total)", "Job p50 / p95 / max (total)"]
    rows = []
    for name, counts in steps.items():
        row = [markdown_text(name)]
        row += [_count(counts.get(key, 0)) for key in ("ran", "skipped", "failed", "cancelled")]
        row.append(_count(counts.get("retries", 0)))
        if dry:
            row.append(_count(counts.get("would_run", 0)))
        time = counts.get("time") or {}
        row += [_timing(time.get("precheck")), _timing(time.get("job"))]
        rows.append(row)
    right = tuple(range(1, len(header)))
    return ["### Steps", "", *table(header, rows, right=right), ""]


def _timing(timing: Mapping[str, Any] | None) -> str:
    if not timing or not timing.get("calls"):
        return "–"
    p50, p95, most, total = (
        human_seconds(float(timing.get(key, 0.0))) for key in ("p50", "p95", "max", "total")
    )
    return f"{p50} / {p95} / {most} ({total}, {_count(timing['calls'])} calls)"


def _errors_table(errors: Sequence[Mapping[str, Any]]) -> list[str]:
    if not errors:
        return []
    rows = [
        [
            "–" if error.get("step") is None else markdown_text(error["step"]),
            markdown_text(error.get("phase") or ("input" if error.get("step") is None else "–")),
            f"`{_code_span(error.get('type', '?'))}`",
            _count(error.get("count", 0)),
            _line(error.get("first_line")),
        ]
        for error in list(errors)[:TOP_ERRORS]
    ]
    header = ["Step", "Phase", "Error", "Records", "First line"]
    title = "### Most frequent errors"
    if len(errors) > TOP_ERRORS:
        title += f" (the first {TOP_ERRORS} of {len(errors)})"
    return [title, "", *table(header, rows, right=(3, 4)), ""]


def _precheck_errors_table(steps: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = [
        [
            markdown_text(step),
            f"`{_code_span(kind)}`",
            _count(entry.get("count", 0)),
            _line(entry.get("first_line")),
        ]
        for step, counts in steps.items()
        for kind, entry in (counts.get("precheck_errors") or {}).items()
    ]
    if not rows:
        return []
    header = ["Step", "Precheck raised", "Records", "First line"]
    note = (
        "Prechecks that raised something other than `Skip` or `Cancel` (their job was "
        "skipped, or with `precheck_errors: fail` the record failed):"
    )
    return ["### Precheck errors", "", note, "", *table(header, rows, right=(2, 3)), ""]


def _limits_table(limits: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not limits:
        return []
    rows = [
        [
            markdown_text(name),
            _count(figure.get("waits", 0)),
            human_seconds(float(figure.get("wait_seconds", 0.0))),
            _count(figure.get("workers", 1)),
            markdown_text(figure.get("share", "")),
        ]
        for name, figure in limits.items()
    ]
    header = ["Limit", "Waits", "Time waited", "Workers", "Share of each"]
    return ["### Limits", "", *table(header, rows, right=(1, 2, 3)), ""]


def table(
    header: Sequence[str], rows: Iterable[Sequence[str]], *, right: Sequence[int] = ()
) -> list[str]:
    """A GitHub-flavoured Markdown table; cells are Markdown already (see ``markdown_text``).

    >>> table(["a", "b"], [["1", "2"]], right=(1,))
    ['| a | b |', '| --- | ---: |', '| 1 | 2 |']
    """
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    return [_row(header), _row(rule), *(_row(row) for row in rows)]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _code_span(text: object) -> str:
    """Text inside a backtick code span: no backslash escapes work there, so a backtick
    or a pipe (which ends a table cell even there) becomes a look-alike."""
    return printable(str(text)).replace("`", "'").replace("|", "¦")


def _count(value: Any) -> str:
    return f"{int(value):,}"


def _line(value: Any) -> str:
    return "–" if value is None else str(int(value))


def write_reports(
    figures: Mapping[str, Any],
    *,
    pipeline: str,
    path: Path | None,
    environ: Mapping[str, str] = os.environ,
    report: Callable[[str], None],
) -> None:
    """Write the report to ``path`` (replaced) and append it to ``$GITHUB_STEP_SUMMARY``
    when set; each failure is given to ``report`` (a message for stderr)."""
    step_summary = environ.get(GITHUB_STEP_SUMMARY)
    if path is None and not step_summary:
        return
    text = render_report(figures, pipeline=pipeline) + "\n"
    if path is not None:
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            report(f"cannot write the report to {path}: {exc.strerror or exc}")
    if step_summary:
        try:
            with open(step_summary, "a", encoding="utf-8") as stream:
                stream.write(text)
        except OSError as exc:
            report(
                f"cannot append the report to ${GITHUB_STEP_SUMMARY} ({step_summary}): "
                f"{exc.strerror or exc}"
            )


class RunOutputs:
    """What a run leaves for monitoring besides its summary: ``--metrics-file`` (also
    written every 15 s while the run goes on), ``--report`` and ``$GITHUB_STEP_SUMMARY``.

    ``pipeline``: the pipeline's ``name:`` (else its file's stem); None when it was not
    loaded (exit 2). ``skip``: the options whose files are the trouble (not written).
    """

    def __init__(
        self, options: RunOptions, *, pipeline: str | None, skip: Collection[str] = ()
    ) -> None:
        self.options = options
        self.metrics: MetricsFile | None = None
        if options.metrics_file is not None and "--metrics-file" not in skip:
            from choreo_cli.cli.metrics import MetricsFile

            self.metrics = MetricsFile(
                options.metrics_file, pipeline=pipeline, pipeline_path=options.pipeline
            )
        self.report = None if "--report" in skip else options.report
        if self.metrics is not None:
            self.pipeline = self.metrics.pipeline
        else:
            self.pipeline = pipeline or options.pipeline.stem

    @contextlib.contextmanager
    def periodic(self, summary: RunSummary) -> Iterator[None]:
        """Write the metrics file every 15 s (from a thread) while the block runs."""
        metrics = self.metrics
        if metrics is None:
            yield
            return
        metrics.start(summary)
        try:
            yield
        finally:
            metrics.stop()

    def write(self, summary: RunSummary, console: Console) -> None:
        """The final metrics and report of a finished ``summary``; a file that cannot be
        written is said on stderr (the exit code stays the run's)."""
        if self.metrics is not None:
            from choreo_cli.cli.metrics import write_metrics

            write_metrics(self.metrics, summary, report=console.error)
        if self.report is not None or os.environ.get(GITHUB_STEP_SUMMARY):
            write_reports(
                summary.to_json(), pipeline=self.pipeline, path=self.report, report=console.error
            )


def wanted(options: RunOptions, *, skip: Collection[str] = ()) -> bool:
    """Whether a run leaves a metrics file or a report (``skip``: options not written)."""
    return (
        (options.metrics_file is not None and "--metrics-file" not in skip)
        or (options.report is not None and "--report" not in skip)
        or bool(os.environ.get(GITHUB_STEP_SUMMARY))
    )
