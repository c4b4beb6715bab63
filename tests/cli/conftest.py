"""Fixtures for CLI tests that run the real `choreo` command in a subprocess."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHOREO = Path(sys.executable).parent / "choreo"
RESULT_SCHEMA = json.loads((ROOT / "schemas" / "result.schema.json").read_text(encoding="utf-8"))
_VALIDATOR = jsonschema.Draft202012Validator(RESULT_SCHEMA)
# Environment variables the tests set themselves: never inherited from the caller's shell.
TEST_VARIABLES = ("CHOREO_T_DSN", "CHOREO_T_UNSET", "CHOREO_T_LIMIT")


def parse_result_lines(data: bytes) -> list[dict[str, Any]]:
    """Every line of ``data`` as a result, each checked against schemas/result.schema.json.

    Fails the test when a line is not UTF-8 JSON, does not end with a newline, or does not
    fit the schema: stdout carries result lines and nothing else.
    """
    if not data:
        return []
    assert data.endswith(b"\n"), f"the output does not end with a newline: {data[-200:]!r}"
    results = []
    for raw in data.split(b"\n")[:-1]:
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AssertionError(f"not a JSON line on the output: {raw!r} ({exc})") from None
        errors = sorted(_VALIDATOR.iter_errors(value), key=str)
        assert not errors, f"{raw!r} does not fit result.schema.json: {errors[0].message}"
        results.append(value)
    return results


def read_results(path: Path) -> list[dict[str, Any]]:
    """The result lines of an ``--output`` file, validated like stdout's."""
    return parse_result_lines(path.read_bytes())


def untimed(summary: dict[str, Any]) -> dict[str, Any]:
    """A --summary-json summary without what differs from run to run (the clock, the
    call timings): for comparing two runs' figures."""
    for timed in ("wall_time", "records_per_second", "started_at", "ended_at"):
        summary.pop(timed, None)
    for step in summary.get("steps", {}).values():
        step.pop("time", None)
    return summary


def choreo_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a `choreo` subprocess: the caller's, minus test variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in TEST_VARIABLES}
    base.pop("NO_COLOR", None)
    base.pop("COLUMNS", None)
    # Under GitHub Actions every run would append its report to the job's summary page.
    base.pop("GITHUB_STEP_SUMMARY", None)
    base.update(env or {})
    return base


@dataclasses.dataclass(frozen=True)
class Run:
    """What one `choreo` command did: exit code, validated result lines, stderr text."""

    code: int
    lines: list[dict[str, Any]]
    stderr: str
    stdout: bytes

    @property
    def indices(self) -> list[int]:
        return [line["index"] for line in self.lines]

    @property
    def statuses(self) -> list[str]:
        return [line["status"] for line in self.lines]


RunChoreo = Callable[..., Run]


@pytest.fixture
def run_choreo(tmp_path: Path) -> RunChoreo:
    """Run ``choreo ARGS`` in ``tmp_path`` (stdin: ``input``), return a validated ``Run``.

    ``run_choreo(["run", "pipeline.yaml"], input=b'{"a": 1}\\n', env={"X": "1"})``.
    """

    def run(
        args: Sequence[str | os.PathLike[str]],
        *,
        input: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 30,
    ) -> Run:
        data = input.encode("utf-8") if isinstance(input, str) else input
        completed = subprocess.run(
            [str(CHOREO), *(str(a) for a in args)],
            input=data if data is not None else b"",
            capture_output=True,
            env=choreo_env(env),
            cwd=cwd or tmp_path,
            timeout=timeout,
            check=False,
        )
        stderr = completed.stderr.decode("utf-8", errors="replace")
        assert "Traceback" not in stderr, stderr
        return Run(
            completed.returncode, parse_result_lines(completed.stdout), stderr, completed.stdout
        )

    return run


WritePipeline = Callable[..., Path]


@pytest.fixture
def write_pipeline(tmp_path: Path) -> WritePipeline:
    """Write ``pipeline.yaml`` (and ``steps.py`` beside it) into ``tmp_path``; return its path.

    Both texts are dedented, so tests can indent them inline.
    """

    def write(pipeline: str, steps: str | None = None, *, name: str = "pipeline.yaml") -> Path:
        if steps is not None:
            (tmp_path / "steps.py").write_text(textwrap.dedent(steps), encoding="utf-8")
        path = tmp_path / name
        path.write_text(textwrap.dedent(pipeline), encoding="utf-8")
        return path

    return write


@pytest.fixture
def parse_results() -> Callable[[bytes], list[dict[str, Any]]]:
    """``parse_result_lines``: bytes of result lines -> validated results."""
    return parse_result_lines


@pytest.fixture
def read_output() -> Callable[[Path], list[dict[str, Any]]]:
    """``read_results``: an ``--output`` file -> validated results."""
    return read_results


StartChoreo = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def start_choreo(tmp_path: Path) -> Iterator[StartChoreo]:
    """Start ``choreo ARGS`` in ``tmp_path`` with piped stdout/stderr; killed after the test.

    ``stdin`` is a file object, ``subprocess.PIPE`` or None (an empty stdin).
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(
        args: Sequence[str | os.PathLike[str]],
        *,
        stdin: Any = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [str(CHOREO), *(str(a) for a in args)],
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=choreo_env(env),
            cwd=tmp_path,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
