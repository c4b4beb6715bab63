"""Process exit codes of the ``choreo`` commands, as one enum (the README's "Exit codes")."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a ``choreo`` command's exit status means.

    >>> int(ExitCode.INTERRUPTED)
    130
    """

    OK = 0
    """Every record succeeded (``validate``: every file is valid)."""
    FAILED = 1
    """Some record failed, was cancelled or invalid, or a resource's teardown failed."""
    USAGE = 2
    """The command line, the pipeline file or the input file is unusable; no record ran."""
    HALTED = 3
    """Stopped early, some input was not run (``--fail-fast``, a failure budget)."""
    INTERRUPTED = 130
    """Interrupted by SIGINT (128 + 2)."""
    BROKEN_PIPE = 141
    """The output was closed by its reader (128 + SIGPIPE)."""
    TERMINATED = 143
    """Terminated by SIGTERM (128 + 15)."""
