"""Every command's help reads plainly, and every usage error is said in choreo's words.

The help and the errors come from the real `choreo` command (a subprocess); the examples
each help shows are read by the command they name, to prove they are still valid.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from choreo_cli.cli.app import app
from choreo_cli.cli.run_options import read_plain_run_args
from tests.cli.conftest import CHOREO, choreo_env

COMMANDS = ["run", "validate", "test", "init", "schema", "show"]
# Click's, typer's and pydantic's words, none of which a choreo message uses.
JARGON = ("Input should", "Value error", "Invalid value for", "No such option", "Missing argument")


def _choreo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHOREO), *args],
        capture_output=True,
        text=True,
        env=choreo_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """``choreo [COMMAND] --help`` for the group ("") and each command; -h says the same."""
    found = {}
    for command in ["", *COMMANDS]:
        words = [command] if command else []
        long = _choreo(*words, "--help")
        short = _choreo(*words, "-h")
        assert (long.returncode, long.stderr) == (0, ""), (command, long.stderr)
        assert short.returncode == 0 and short.stdout == long.stdout, command
        found[command] = long.stdout
    return found


@pytest.fixture(scope="module")
def starter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the starter pipeline `choreo init` writes."""
    folder = tmp_path_factory.mktemp("starter")
    assert _choreo("init", str(folder)).returncode == 0
    return folder


def test_h_is_help_everywhere(helps: dict[str, str]) -> None:
    assert set(helps) == {"", *COMMANDS}
    for command, text in helps.items():
        assert text.startswith(f"Usage: choreo {command}".rstrip() + " "), command
        assert "  -h, --help " in text, command


def test_help_shows_no_type_notation(helps: dict[str, str]) -> None:
    for command, text in helps.items():
        plain = re.sub(r"\$\{[A-Z]+\}", "", text)  # ${VAR}: the pipeline file's notation
        for notation in ("{", "<", "list[", "int range", "<path>", "x>=", "<=x"):
            assert notation not in plain, (command, notation)
    assert helps["run"].startswith("Usage: choreo run [OPTIONS] PIPELINE\n")
    assert helps["validate"].startswith("Usage: choreo validate [OPTIONS] PATH...\n")
    assert helps["test"].startswith("Usage: choreo test [OPTIONS] [PATH]...\n")
    assert helps["init"].startswith("Usage: choreo init [OPTIONS] [DIR]\n")
    assert helps["show"].startswith("Usage: choreo show [OPTIONS] PIPELINE\n")
    for line in ("  -w, --workers N ", "  --executor [thread|process|dask]\n", "  PIPELINE  "):
        assert line in helps["run"], line
    assert "  PATH...  " in helps["validate"] and "  PATH...  " in helps["test"]
    assert "[from 1 to 4096]" in helps["run"] and "at least 1]" in helps["run"]


def test_the_command_list_says_what_each_command_does_in_full(helps: dict[str, str]) -> None:
    listed = helps[""].split("\nCommands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in listed] == [
        "run",
        "validate",
        "schema",
        "show",
        "test",
        "init",
    ]
    for line in listed:
        assert len(line) <= 80 and line.endswith("."), line
        assert not line.endswith(("...", "e.g.")), line


def _examples(text: str) -> list[str]:
    block = text.split("\nExamples:\n", 1)[1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_every_help_ends_with_examples(helps: dict[str, str]) -> None:
    for command, text in helps.items():
        examples = _examples(text)
        assert examples, command
        assert all(line.startswith(("choreo ", "cat ")) for line in examples), examples
        if command:
            assert any(line.startswith(f"choreo {command}") for line in examples), command


def test_every_example_is_a_command_line_its_command_reads(helps: dict[str, str]) -> None:
    group = typer.main.get_command(app)
    for text in helps.values():
        for example in _examples(text):
            for part in re.split(r"\s*(?:\||&&)\s*", example):
                words = shlex.split(part.split(">")[0])
                if words[0] != "choreo":
                    continue
                command = group.commands[words[1]]  # type: ignore[attr-defined]
                # Reads the command line as `choreo` does (options, values, callbacks).
                command.make_context(
                    words[1], words[2:], parent=typer.Context(group, info_name="choreo")
                )


def test_examples_of_the_starter_pipeline_work(starter: Path) -> None:
    for args in (
        ["run", "pipeline.yaml", "-i", "records.jsonl", "-o", "results.jsonl"],
        ["run", "pipeline.yaml", "-i", "records.jsonl", "--dry-run"],
        ["validate", "pipeline.yaml"],
        ["test", "pipeline.test.yaml", "-k", "welcomed", "-q"],
        ["show", "pipeline.yaml", "--format", "json"],
    ):
        done = _choreo(*args, cwd=starter)
        assert done.returncode == 0, (args, done.stderr)


# -- usage errors --------------------------------------------------------------------------

USAGE_ERRORS = [
    # (command line, what the message names, what it says)
    (["run", "pipeline.yaml", "--workers", "0"], "--workers", "must be a whole number from 1 to 4096, not '0'"),
    (["run", "pipeline.yaml", "-w", "0"], "--workers", "must be a whole number from 1 to 4096, not '0'"),
    (["run", "--workers=100000", "pipeline.yaml"], "--workers", "not '100000'"),
    (["run", "pipeline.yaml", "--workers", "four"], "--workers", "not 'four'"),
    (["run", "pipeline.yaml", "--max-line-bytes", "0"], "--max-line-bytes", "must be a whole number of at least 1, not '0'"),
    (["run", "pipeline.yaml", "--max-consecutive-failures", "0"], "--max-consecutive-failures", "of at least 1"),
    (["run", "pipeline.yaml", "--max-failures", "5x"], "--max-failures", "'5x' is not a number of records"),
    (["run", "pipeline.yaml", "--executor", "nope"], "--executor", "must be one of thread, process, dask, not 'nope'"),
    (["run", "pipeline.yaml", "--precheck-errors", "nope"], "--precheck-errors", "must be one of skip, fail"),
    (["run", "pipeline.yaml", "--bogus"], "--bogus", "choreo run has no option --bogus"),
    (["run", "pipeline.yaml", "--worker", "3"], "--worker", "(did you mean one of --ordered, --unordered, --workers?)"),
    (["run", "pipeline.yaml", "--workers"], "--workers", "--workers needs a value (--workers N)"),
    (["run"], "PIPELINE", "choreo run needs PIPELINE (the pipeline file)"),
    (["run", "pipeline.yaml", "--quiet=yes"], "--quiet", "--quiet takes no value"),
    (["run", "pipeline.yaml", "b.yaml"], "b.yaml", "too many arguments: b.yaml (choreo run takes PIPELINE)"),
    (["schema", "x"], "x", "too many arguments: x (choreo schema takes no arguments)"),
    (["validate", "--format", "nope", "."], "--format", "must be one of text, json, github, not 'nope'"),
    (["validate"], "PATH", "choreo validate needs at least one PATH"),
    (["test", "--format", "nope"], "--format", "must be one of text, json, github, junit, not 'nope'"),
    (["test", "--timeout", "0"], "--timeout", "must be a number of at least 0.001, not '0'"),
    (["show", "--format", "nope", "pipeline.yaml"], "--format", "must be one of table, json, not 'nope'"),
    (["show"], "PIPELINE", "choreo show needs PIPELINE"),
    (["init", "--name"], "--name", "--name needs a value (--name NAME)"),
    (["schema", "--bogus"], "--bogus", "choreo schema has no option --bogus"),
    (["--bogus"], "--bogus", "choreo has no option --bogus"),
    (["rn"], "rn", "no such command 'rn' (did you mean 'run'?)"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "named", "says"), USAGE_ERRORS)
def test_a_usage_error_is_one_line_in_choreo_words(
    starter: Path, args: list[str], named: str, says: str
) -> None:
    done = _choreo(*args, cwd=starter)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert named in done.stderr and says in done.stderr, done.stderr
    command = " ".join(["choreo", *args[:1]]) if args[0] in COMMANDS else "choreo"
    assert done.stderr.endswith(f" — see {command} --help\n"), done.stderr
    for words in JARGON:
        assert words not in done.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "pipeline.yaml", "--limit", "bad"], "--limit"),
        (["run", "pipeline.yaml", "--set", "bad"], "--set"),
    ],
)
def test_values_read_after_the_command_line_are_errors_in_choreo_words(
    starter: Path, args: list[str], named: str
) -> None:
    done = _choreo(*args, cwd=starter)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"error: {named} needs ") and done.stderr.count("\n") == 1
    for words in JARGON:
        assert words not in done.stderr


def test_a_bad_run_value_is_always_said_by_the_same_code() -> None:
    # `choreo run` lines are read without typer only when every value is plainly valid:
    # each bad one above goes to typer, whichever way it is written.
    for args, _, _ in USAGE_ERRORS:
        if args[0] == "run":
            assert read_plain_run_args(args[1:]) is None, args
    for written in (["p.yaml", "-w0"], ["p.yaml", "--workers=0"], ["-w", "0", "p.yaml"]):
        assert read_plain_run_args(written) is None
    for bad in (["--workers", "0"], ["--workers=0"], ["-w0"]):
        first = _choreo("run", "pipeline.yaml", *bad)
        assert first.stderr.startswith(
            "error: --workers must be a whole number from 1 to 4096, not '0'"
        )
