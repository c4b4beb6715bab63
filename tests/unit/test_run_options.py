"""The quick reading of `choreo run` command lines agrees with typer's, for any command line."""

from __future__ import annotations

from typing import Any
from unittest import mock

import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from choreo_cli.cli.app import app
from choreo_cli.cli.run_options import OPTIONS, RunOptions, read_plain_run_args
from choreo_cli.cli.streams import Streams
from choreo_cli.core.exit_codes import ExitCode

RUN = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]


def read_by_typer(args: list[str]) -> RunOptions | None:
    """The RunOptions typer passes on for ``choreo run ARGS``, or None when it refuses."""
    seen: list[RunOptions] = []

    def execute(options: RunOptions, *, streams: Streams) -> ExitCode:
        seen.append(options)
        return ExitCode.OK

    with mock.patch("choreo_cli.cli.run_session.execute", execute):
        outcome = CliRunner().invoke(app, ["run", *args])
    if outcome.exit_code != 0:
        assert not seen
        return None
    assert len(seen) == 1, outcome.output
    return seen[0]


def test_the_quick_reading_knows_every_option_of_the_command_and_no_other() -> None:
    names = {name for param in RUN.params for name in (*param.opts, *param.secondary_opts)}
    assert set(OPTIONS) == names - {"pipeline"}
    for param in RUN.params:
        for name in (*param.opts, *param.secondary_opts):
            if name in OPTIONS:
                assert OPTIONS[name][0] == param.name


VALUES = ["x.jsonl", "-", "", "-x", "a=1", "b=two words", "0", "04", "4", "+4", "12", "٣"]
VALUES += ["4096", "4097", "100000"]  # --workers has a limit, --max-line-bytes none
VALUES += ["thread", "process", "dask", "Dask", "DEBUG", "tcp://h:8786", "--quiet", "--"]
TOKENS = st.one_of(
    st.sampled_from(sorted(OPTIONS)),
    st.sampled_from(VALUES),
    st.sampled_from(["p.yaml", "other.yaml", "--help", "-qw", "-w4", "--bogus", "-"]),
    st.builds(
        lambda name, value: f"{name}={value}",
        st.sampled_from(sorted(OPTIONS)),
        st.sampled_from(VALUES),
    ),
)


def command_lines() -> st.SearchStrategy[list[str]]:
    # Mostly well-formed lines (option, value) around one pipeline, with stray tokens.
    pair = st.sampled_from(sorted(OPTIONS)).flatmap(
        lambda name: (
            st.tuples(st.just(name), st.sampled_from(VALUES))
            if not isinstance(OPTIONS[name][1], bool)
            else st.tuples(st.just(name))
        )
    )
    parts = st.lists(st.one_of(pair, pair, pair, TOKENS.map(lambda t: (t,))), max_size=7)
    return st.tuples(parts, st.integers(0, 7)).map(
        lambda drawn: [
            token
            for i, part in enumerate([*drawn[0][: drawn[1]], ("p.yaml",), *drawn[0][drawn[1] :]])
            for token in part
        ]
    )


@settings(derandomize=True, database=None, max_examples=400, deadline=None)
@given(command_lines())
def test_a_plain_command_line_reads_as_typer_reads_it(args: list[str]) -> None:
    quick = read_plain_run_args(args)
    if quick is not None:
        assert read_by_typer(args) == quick


@settings(derandomize=True, database=None, max_examples=150, deadline=None)
@given(st.lists(TOKENS, max_size=6))
def test_any_command_line_is_read_as_typer_reads_it_or_left_to_typer(args: list[str]) -> None:
    quick = read_plain_run_args(args)
    if quick is not None:
        assert read_by_typer(args) == quick


def test_typical_command_lines_take_the_quick_reading() -> None:
    cases: list[tuple[list[str], dict[str, Any]]] = [
        (["p.yaml"], {}),
        (["p.yaml", "--input", "in.jsonl", "-q"], {"input": "in.jsonl", "quiet": True}),
        (["-w", "8", "p.yaml", "--unordered"], {"workers": 8, "ordered": False}),
        (["p.yaml", "--set", "a=1", "--set=b=2"], {"set_values": ("a=1", "b=2")}),
        (["p.yaml", "--executor", "process", "-o", "-"], {"executor": "process"}),
        (["p.yaml", "--summary-json", "s.json", "--no-progress"], {"progress": False}),
        (["p.yaml", "-w", "4096", "--max-line-bytes", "100"], {"max_line_bytes": 100}),
    ]
    for args, fields in cases:
        quick = read_plain_run_args(args)
        assert quick is not None, args
        for name, value in fields.items():
            assert getattr(quick, name) == value
        assert read_by_typer(args) == quick


def test_help_and_values_to_check_are_left_to_typer() -> None:
    for args in (
        ["p.yaml", "--help"],
        [],
        ["p.yaml", "-w", "0"],
        ["p.yaml", "-w", "4097"],
        ["p.yaml", "--max-line-bytes", "0"],
        ["p.yaml", "--executor", "Dask"],
        ["p.yaml", "other.yaml"],
        ["p.yaml", "-w4"],
        ["p.yaml", "--input"],
    ):
        assert read_plain_run_args(args) is None, args
