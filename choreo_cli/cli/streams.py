"""The standard streams of a `choreo` command, owned by one object that tests can replace."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

if TYPE_CHECKING:
    import typer


def no_color(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``NO_COLOR`` is set to a non-empty value (https://no-color.org).

    >>> no_color({"NO_COLOR": ""}), no_color({"NO_COLOR": "1"})
    (False, True)
    """
    return bool((os.environ if environ is None else environ).get("NO_COLOR"))


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an interactive terminal (False for anything without isatty)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def path_is_terminal(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` names a terminal (``--output /dev/tty``); only a character
    device is opened to ask (never to become the controlling terminal, never blocking).

    >>> path_is_terminal(os.devnull)
    False
    """
    try:
        if not stat.S_ISCHR(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


def fancy(stream: Any, environ: Mapping[str, str] | None = None) -> bool:
    """Whether colour and live displays may be used on ``stream``: a terminal, no
    ``NO_COLOR``, and not ``TERM=dumb``."""
    environ = os.environ if environ is None else environ
    return is_terminal(stream) and not no_color(environ) and environ.get("TERM") != "dumb"


def descriptor(stream: Any) -> int | None:
    """The file descriptor behind ``stream``, or None (closed, or in memory)."""
    try:
        return int(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return None


class Streams:
    """stdin, stdout and stderr of one command, and what is known of them.

    ``Streams.for_process()`` is built once, in the console script, and passed down;
    a test builds its own over in-memory files and runs a command in-process::

        stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        streams = Streams(stdin=None, stdout=stdout, stderr=io.StringIO())

    ``descriptors`` says the streams are the process's descriptors 0, 1 and 2, which
    `choreo run` may point elsewhere while it runs (see ``divert_stdout``). A stream
    that was closed when the process started (``>&-``) reads as ``/dev/null``, and
    ``stdout_closed_at_start``/``stderr_closed_at_start`` say so.

    >>> import io
    >>> streams = Streams(stdin=None, stdout=io.StringIO(), stderr=io.StringIO(), environ={})
    >>> streams.stdin_binary is None, streams.stderr_is_terminal, streams.stderr_fancy
    (True, False, False)
    """

    def __init__(
        self,
        *,
        stdin: TextIO | None,
        stdout: TextIO,
        stderr: TextIO,
        environ: Mapping[str, str] | None = None,
        stdout_closed_at_start: bool = False,
        stderr_closed_at_start: bool = False,
        descriptors: bool = False,
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.stdout_closed_at_start = stdout_closed_at_start
        self.stderr_closed_at_start = stderr_closed_at_start
        self.descriptors = descriptors

    @classmethod
    def for_process(cls) -> Streams:
        """The process's own streams (``sys.stdin``, ``sys.stdout``, ``sys.stderr``).

        Started with stdout or stderr closed (``>&-``), Python sets them to None and the
        first print would end in a traceback: they are replaced, for the whole process,
        by ``/dev/null``, which keeps exit codes meaningful. `choreo run` still refuses
        to write its results to a stdout that was closed (``stdout_closed_at_start``).
        """
        stderr_closed = sys.stderr is None
        if stderr_closed:
            sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - process-long
        stdout_closed = sys.stdout is None
        if stdout_closed:
            sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - process-long
        return cls(
            stdin=sys.stdin,
            stdout=sys.stdout,
            stderr=sys.stderr,
            stdout_closed_at_start=stdout_closed,
            stderr_closed_at_start=stderr_closed,
            descriptors=True,
        )

    # -- what is known of them ------------------------------------------------------------

    @property
    def stdin_binary(self) -> BinaryIO | None:
        """Standard input's bytes, or None when it was closed at start."""
        return None if self.stdin is None else self.stdin.buffer

    @property
    def stdout_binary(self) -> BinaryIO:
        """Standard output's bytes (the text stream's buffer)."""
        return self.stdout.buffer

    @property
    def stdout_is_terminal(self) -> bool:
        """True when stdout is an interactive terminal."""
        return is_terminal(self.stdout)

    @property
    def stderr_is_terminal(self) -> bool:
        """True when stderr is an interactive terminal."""
        return is_terminal(self.stderr)

    @property
    def no_color(self) -> bool:
        """True when ``NO_COLOR`` is set to a non-empty value."""
        return no_color(self.environ)

    @property
    def stderr_fancy(self) -> bool:
        """Whether colour and live displays may be used on stderr."""
        return fancy(self.stderr, self.environ)

    def stdin_descriptor(self) -> int | None:
        """The descriptor behind stdin, or None (closed at start, or in memory)."""
        return None if self.stdin is None else descriptor(self.stdin)

    def stdout_descriptor(self) -> int | None:
        """The descriptor behind stdout, or None (in memory)."""
        return descriptor(self.stdout)

    # -- writing ----------------------------------------------------------------------------

    def write_stdout(self, text: str) -> None:
        """Write ``text`` to stdout and flush it."""
        self.stdout.write(text)
        self.stdout.flush()

    def divert_stdout(self, stack: contextlib.ExitStack) -> BinaryIO | None:
        """A stream of its own on stdout's file, for the result lines, while descriptor 1
        points at stderr until ``stack`` closes.

        What steps and resources print (print(), C code, child processes, worker
        processes started by the run) then goes to stderr, never between the result
        lines. The caller closes the stream (``stack`` does if nobody did). None (write
        to ``stdout_binary`` as it is) when stdout was closed at start, when descriptor 1
        cannot be pointed at stderr, or when the streams are not the process's descriptors.
        """
        if not self.descriptors or self.stdout_closed_at_start:
            return None
        try:
            self.stdout.flush()
            saved = os.dup(1)
        except (OSError, ValueError):
            return None
        try:
            os.dup2(2, 1)
        except OSError:
            os.close(saved)
            return None

        def restore() -> None:
            with contextlib.suppress(OSError, ValueError):
                self.stdout.flush()
            with contextlib.suppress(OSError):
                os.dup2(saved, 1)
            os.close(saved)

        stack.callback(restore)
        results = os.fdopen(os.dup(saved), "wb")
        stack.callback(results.close)  # closed by the writer, unless the run never began
        return results


def streams_of(context: typer.Context) -> Streams:
    """The Streams the console script handed to typer (``app(obj=streams)``); the
    process's own when a command runs without them (typer's test runner)."""
    given = context.obj
    return given if isinstance(given, Streams) else Streams.for_process()
