"""`choreo run --report`: a Markdown report of the run, appended to $GITHUB_STEP_SUMMARY
too; every text from a file, a record or an exception escaped."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from tests.cli.test_metrics_file import INPUT, PIPELINE, STEPS
from tests.cli.test_summary_json import read_summary

RunChoreo = Callable[..., Any]  # the run_choreo fixture of conftest.py: -> Run
WritePipeline = Callable[..., Path]  # the write_pipeline fixture of conftest.py


def tables(markdown: str) -> list[list[list[str]]]:
    """The tables of ``markdown`` as a GitHub-like renderer reads them: rows of cell texts
    (the header row first). Every row must have as many cells as the header."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    found: list[list[list[str]]] = []
    row: list[str] | None = None
    for token in tokens:
        if token.type == "table_open":
            found.append([])
        elif token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(
                "".join(
                    child.content for child in token.children or [] if child.type != "softbreak"
                )
            )
        elif token.type == "tr_close":
            assert row is not None
            found[-1].append(row)
            row = None
    for table in found:
        assert all(len(line) == len(table[0]) for line in table), table
    return found


def table_with(markdown: str, *header: str) -> list[list[str]]:
    """The table whose header starts with ``header``."""
    matching = [table for table in tables(markdown) if tuple(table[0][: len(header)]) == header]
    assert len(matching) == 1, f"no single table headed {header!r} in:\n{markdown}"
    return matching[0]


def test_the_report_has_the_counts_steps_errors_and_limits(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(PIPELINE, STEPS)
    (tmp_path / "in.jsonl").write_text(INPUT)
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "-q", "--report", "r.md"]
    run = run_choreo([*args, "--summary-json", "s.json"])
    assert run.code == 1, run.stderr
    summary = read_summary(tmp_path / "s.json")
    report = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert report.startswith("## choreo run `statements`: exit 1, some records did not succeed"), (
        report
    )
    records = table_with(report, "Status")
    assert records[1:] == [
        ["succeeded", "5"], ["failed", "1"], ["cancelled", "1"], ["invalid", "1"],
        ["resumed", "0"], ["total", "8"],
    ]  # fmt: skip
    steps = {row[0]: row for row in table_with(report, "Step", "Ran")[1:]}
    assert steps["create"][:6] == ["create", "5", "2", "1", "1", str(
        summary["steps"]["create"].get("retries", 0)
    )]  # fmt: skip
    assert steps["notify"][:6] == ["notify", "5", "0", "0", "0", "0"]
    limits = table_with(report, "Limit")
    assert limits[0] == ["Limit", "Waits", "Time waited", "Workers", "Share of each"]
    assert limits[1][0] == "api" and limits[1][3:] == ["1", "1000/s"]
    if "errors" in summary:
        errors = table_with(report, "Step", "Phase")[1:]
        assert ["create", "job", "ValueError", "1", "3"] in errors
        assert ["create", "job", "Cancel", "1", "6"] in errors
        assert ["–", "input", "JSONDecodeError", "1", "8"] in errors
    if "precheck_errors" in summary["steps"]["create"]:
        assert table_with(report, "Step", "Precheck raised")[1:] == [
            ["create", "KeyError", "1", "4"]
        ]


def test_github_step_summary_is_appended_to_by_each_run(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(PIPELINE, STEPS)
    (tmp_path / "in.jsonl").write_text('{"id": 1}\n')
    step_summary = tmp_path / "step_summary.md"
    step_summary.write_text("# Earlier step\n\n")
    env = {"GITHUB_STEP_SUMMARY": str(step_summary)}
    for _ in range(2):
        run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "-q"], env=env)
        assert run.code == 0, run.stderr
    text = step_summary.read_text(encoding="utf-8")
    assert text.startswith("# Earlier step\n\n## choreo run `statements`: exit 0")
    assert text.count("## choreo run `statements`: exit 0, every record succeeded") == 2
    # With --report as well: the same text in both.
    report = tmp_path / "r.md"
    run = run_choreo(["run", "pipeline.yaml", "-i", "in.jsonl", "-q", "--report", report], env=env)
    assert run.code == 0, run.stderr
    assert step_summary.read_text(encoding="utf-8").endswith(report.read_text(encoding="utf-8"))


def test_exit_2_writes_a_short_report_with_the_error(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    write_pipeline(PIPELINE.replace("job: steps:create", "jbo: steps:create", 1), STEPS)
    step_summary = tmp_path / "step_summary.md"
    run = run_choreo(
        ["run", "pipeline.yaml", "--report", "r.md"], env={"GITHUB_STEP_SUMMARY": str(step_summary)}
    )
    assert run.code == 2
    report = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert report.startswith("## choreo run `pipeline`: exit 2, refused before any record ran")
    assert "### Refused" in report
    assert "unknown key 'jbo'" in report
    assert step_summary.read_text(encoding="utf-8") == report


def test_text_from_files_and_exceptions_cannot_break_the_tables(
    run_choreo: RunChoreo, write_pipeline: WritePipeline, tmp_path: Path
) -> None:
    steps = """\
        Odd = type("Bad|Type\\n<b>`x`</b>", (Exception,), {})


        def job(ctx, record):
            if record.get("fail"):
                raise Odd("a | b\\nc")
        """
    write_pipeline(
        """\
        version: 1
        name: "a|b <i>"
        steps:
          - name: "step | one\\n# two"
            job: steps:job
            limit: "lim|it"
        limits:
          "lim|it": {concurrency: 1}
        """,
        steps,
    )
    (tmp_path / "in.jsonl").write_text(json.dumps({"fail": True}) + "\n")
    args = ["run", "pipeline.yaml", "-i", "in.jsonl", "-q", "--fail-fast", "--report", "r.md"]
    run = run_choreo([*args, "--summary-json", "s.json"])
    assert run.code == 3, run.stderr
    report = (tmp_path / "r.md").read_text(encoding="utf-8")
    tables(report)  # every row as wide as its header
    html = MarkdownIt("commonmark").enable("table").render(report)
    assert "<b>" not in html and "<i>" not in html and "<h1>" not in html
    assert table_with(report, "Step", "Ran")[1][0] == "step | one\\n# two"
    assert table_with(report, "Limit")[1][0] == "lim|it"
    assert report.startswith("## choreo run `a¦b <i>`: exit 3")
    if "errors" in read_summary(tmp_path / "s.json"):
        assert table_with(report, "Step", "Phase")[1][2] == "Bad¦Type\\n<b>'x'</b>"
    halted = [line for line in report.splitlines() if line.startswith("**Halted:**")]
    assert len(halted) == 1 and "Bad\\|Type\\\\n\\<b\\>" in halted[0], halted
