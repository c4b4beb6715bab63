"""The quick reading of `choreo validate` command lines agrees with typer's, for any line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from choreo_cli.cli.app import app
from choreo_cli.cli.streams import Streams
from choreo_cli.cli.validate_files import ValidateOptions, read_plain_validate_args
from choreo_cli.core.exit_codes import ExitCode

VALIDATE = typer.main.get_command(app).commands["validate"]  # type: ignore[attr-defined]
OPTIONS = ["--format", "-f", "--no-import", "--strict"]


def read_by_typer(args: list[str]) -> ValidateOptions | None:
    """The options typer passes on for ``choreo validate ARGS``, or None when it refuses."""
    seen: list[ValidateOptions] = []

    def check_files(options: ValidateOptions, streams: Streams) -> ExitCode:
        seen.append(options)
        return ExitCode.OK

    with mock.patch("choreo_cli.cli.validate_files.check_files", check_files):
        outcome = CliRunner().invoke(app, ["validate", *args])
    if outcome.exit_code != 0:
        assert not seen
        return None
    assert len(seen) == 1, outcome.output
    return seen[0]


def test_the_quick_reading_knows_every_option_of_the_command() -> None:
    names = {name for param in VALIDATE.params for name in (*param.opts, *param.secondary_opts)}
    assert names - {"pipelines", "-h", "--help"} == set(OPTIONS)


WORDS = ["text", "JSON", "github", "nope", "p.yaml", "dir/", "-", "--", "-h", "--bogus"]
WORDS += ["--format=json", "--format=x", "-fgithub", "-fx", "--strict=1", "-q"]
TOKENS = st.sampled_from([*OPTIONS, *WORDS])


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(st.lists(TOKENS, max_size=6))
def test_a_plain_command_line_reads_as_typer_reads_it(args: list[str]) -> None:
    quick = read_plain_validate_args(args)
    if quick is not None:  # None: typer reads it (and says what is wrong)
        assert quick == read_by_typer(args)


def test_a_plain_validate_runs_without_importing_typer(tmp_path: Path) -> None:
    """The point of the quick reading: `choreo validate p.yaml` skips typer's start-up."""
    (tmp_path / "p.yaml").write_text("version: 1\nsteps: []\n", encoding="utf-8")
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.__stderr__.write(f'typer: {\"typer\" in sys.modules}\\n'))\n"
        "sys.argv = ['choreo', 'validate', '--no-import', 'p.yaml']\n"
        "from choreo_cli.cli.entry import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert "typer: False" in done.stderr, done.stderr
