"""The one owner of the standard streams: colour rules, closed streams, stdout diverted for results."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TextIO

import pytest
from typer.testing import CliRunner

from choreo_cli.cli.app import app
from choreo_cli.cli.console import build_console
from choreo_cli.cli.streams import Streams

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def terminal() -> Iterator[TextIO]:
    """A text stream on a pseudo-terminal (isatty() is true)."""
    master, slave = pty.openpty()
    stream = open(slave, "w")  # noqa: SIM115 - closed below
    try:
        yield stream
    finally:
        stream.close()
        os.close(master)


def memory_streams(*, stdin: bytes | None = b"", environ: dict[str, str] | None = None) -> Streams:
    """Streams over in-memory files: stdout's bytes in ``stdout.buffer``, stderr as text."""
    return Streams(
        stdin=None if stdin is None else io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"),
        stdout=io.TextIOWrapper(io.BytesIO(), encoding="utf-8"),
        stderr=io.StringIO(),
        environ={} if environ is None else environ,
    )


def run_python(code: str, *, shell_suffix: str = "") -> subprocess.CompletedProcess[bytes]:
    """Run ``code`` in a new interpreter through ``sh -c`` (``shell_suffix``: redirections)."""
    script = f"'{sys.executable}' -c '{code}' {shell_suffix}"
    return subprocess.run(
        ["sh", "-c", script],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )


# -- colour -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"TERM": "xterm"}, True),
        ({"TERM": "xterm", "NO_COLOR": ""}, True),  # an empty NO_COLOR does not count
        ({"TERM": "xterm", "NO_COLOR": "1"}, False),
        ({"TERM": "dumb"}, False),
    ],
)
def test_colour_on_a_terminal_follows_the_streams_environment(
    terminal: TextIO,
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    expected: bool,
) -> None:
    # The process's own environment says the opposite: only the Streams' counts.
    monkeypatch.setenv("NO_COLOR", "" if not expected else "1")
    monkeypatch.setenv("TERM", "dumb" if expected else "xterm")
    streams = Streams(stdin=None, stdout=io.StringIO(), stderr=terminal, environ=environ)
    assert streams.stderr_is_terminal
    assert streams.stderr_fancy is expected
    assert build_console(streams).fancy is expected


def test_no_colour_and_no_terminal_off_a_terminal() -> None:
    streams = memory_streams(environ={"TERM": "xterm"})
    assert not streams.stderr_is_terminal
    assert not streams.stdout_is_terminal
    assert not streams.stderr_fancy
    assert not streams.no_color
    assert memory_streams(environ={"NO_COLOR": "yes"}).no_color


# -- the process's streams ----------------------------------------------------------------------


def test_a_stream_closed_at_start_reads_as_dev_null_and_says_so() -> None:
    code = textwrap.dedent(
        """
        import os, sys
        from choreo_cli.cli.streams import Streams
        streams = Streams.for_process()
        assert sys.stdout is streams.stdout and sys.stderr is streams.stderr
        os.write(3, repr((streams.stdout_closed_at_start, streams.stderr_closed_at_start,
                          streams.descriptors, streams.stdin_binary is None)).encode())
        print("lost")
        """
    ).replace("'", '"')
    done = run_python(code, shell_suffix=">&- 3>&2 2>&-")
    assert done.returncode == 0
    assert done.stderr == b"(True, True, True, False)"
    assert done.stdout == b""


def test_stdin_closed_at_start_has_no_binary_stream() -> None:
    code = "from choreo_cli.cli.streams import Streams; print(Streams.for_process().stdin_binary)"
    done = run_python(code, shell_suffix="<&-")
    assert done.stdout == b"None\n"


DIVERT = textwrap.dedent(
    """
    import contextlib, os, sys
    from choreo_cli.cli.streams import Streams
    streams = Streams.for_process()
    with contextlib.ExitStack() as stack:
        results = streams.divert_stdout(stack)
        print("a step prints", flush=True)
        os.write(1, b"C code writes\\n")
        results.write(b"result\\n")
        results.close()
    print("after the run")
    """
).replace("'", '"')


def test_while_diverted_what_steps_print_goes_to_stderr() -> None:
    done = run_python(DIVERT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"result\nafter the run\n"
    assert done.stderr == b"a step prints\nC code writes\n"


def test_a_stdout_closed_at_start_is_not_diverted() -> None:
    code = textwrap.dedent(
        """
        import contextlib
        from choreo_cli.cli.streams import Streams
        streams = Streams.for_process()
        with contextlib.ExitStack() as stack:
            assert streams.divert_stdout(stack) is None
            print("a step prints")
        """
    ).replace("'", '"')
    done = run_python(code, shell_suffix=">&-")
    assert done.returncode == 0, done.stderr
    # What steps print goes where stdout went: /dev/null, not stderr.
    assert done.stderr == b""


def test_streams_that_are_not_the_processs_are_never_diverted() -> None:
    import contextlib

    streams = memory_streams()
    with contextlib.ExitStack() as stack:
        assert streams.divert_stdout(stack) is None


# -- result lines on stdout: a closed pipe, a full disk ------------------------------------------

WRITE_RESULTS = textwrap.dedent(
    """
    import contextlib, sys
    from pathlib import Path
    from choreo_cli.cli.run_options import RunOptions
    from choreo_cli.cli.run_setup import build_writer
    from choreo_cli.cli.streams import Streams
    from choreo_cli.core.coordinator import Coordinator
    result = Coordinator().run(1)
    streams = Streams.for_process()
    with contextlib.ExitStack() as stack:
        writer = build_writer(
            RunOptions(pipeline=Path("p.yaml")),
            streams=streams,
            results=streams.divert_stdout(stack),
            checkpoint=None,
            on_failure=lambda: None,
        )
        for i in range({count}):
            writer.write(result)
            if writer.failed:
                break
        writer.close()
    print(writer.error_message, file=sys.stderr)
    sys.exit(141 if writer.broken else 1 if writer.failed else 0)
    """
)


def write_results(count: int, stdout: IO[bytes]) -> subprocess.CompletedProcess[bytes]:
    code = WRITE_RESULTS.format(count=count)
    return subprocess.run(
        [sys.executable, "-c", code],
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )


def test_stdout_closed_by_head_exits_quietly() -> None:
    head = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert head.stdin is not None
    done = write_results(1_000_000, head.stdin)
    head.stdin.close()
    head.wait(10)
    assert head.stdout is not None
    assert head.stdout.read().count(b"\n") == 1
    head.stdout.close()
    assert done.returncode == 141
    assert b"Traceback" not in done.stderr
    assert b"Exception ignored" not in done.stderr
    assert (
        done.stderr.decode().strip() == "cannot write results to stdout: the reader closed the pipe"
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_on_a_full_disk_exits_with_a_message() -> None:
    with open("/dev/full", "wb") as full:
        done = write_results(10, full)
    assert done.returncode == 1
    assert done.stderr.decode().strip() == "cannot write results to stdout: No space left on device"


# -- commands write to the streams they are given ------------------------------------------------


def test_typer_commands_write_to_the_streams_handed_to_them(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("version: 1\nsteps: [{name: a, job: steps:a}]\n", encoding="utf-8")
    streams = memory_streams()
    outcome = CliRunner().invoke(app, ["validate", "--no-import", str(pipeline)], obj=streams)
    assert outcome.exit_code == 0
    assert outcome.output == ""  # nothing went to the process's (the runner's) streams
    assert isinstance(streams.stderr, io.StringIO)
    assert streams.stderr.getvalue() == "ok: 1 file valid\n"

    streams = memory_streams()
    outcome = CliRunner().invoke(app, ["show", str(tmp_path / "missing.yaml")], obj=streams)
    assert outcome.exit_code == 2
    assert outcome.output == ""
    assert isinstance(streams.stderr, io.StringIO)
    assert "not a usable pipeline file" in streams.stderr.getvalue()

    streams = memory_streams()
    outcome = CliRunner().invoke(app, ["schema"], obj=streams)
    assert outcome.exit_code == 0
    assert outcome.output == ""
    streams.stdout.flush()
    schema = (ROOT / "schemas" / "pipeline.schema.json").read_bytes()
    assert streams.stdout.buffer.getvalue() == schema  # type: ignore[attr-defined]
