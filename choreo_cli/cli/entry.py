"""The console script: quick paths for ``--version`` and plain ``run`` lines, else typer.

SIGINT and SIGTERM are held (blocked) while choreo imports what it runs with: a
KeyboardInterrupt raised while an extension module initialises can crash the interpreter
(orjson's did: a segfault, exit 139, for a Ctrl-C about 70-120 ms into `choreo run`), and
one raised in any other import printed a traceback. A signal that came meanwhile ends the
process once they are released, with 128 + its number and nothing written. From there a
Ctrl-C raises KeyboardInterrupt (exit 130) until the run installs its own handlers
(cli/run_state.py); once the command is over, a signal ends the process at once, after
what it wrote was flushed, instead of raising into the interpreter's exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Collection
    from types import FrameType

    from choreo_cli.cli.streams import Streams

HELD = (signal.SIGINT, signal.SIGTERM)


def hold_signals() -> Collection[int]:
    """Block SIGINT and SIGTERM; the signals blocked before, for ``release_signals``."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


def release_signals(before: Collection[int]) -> None:
    """Unblock what ``hold_signals`` blocked. A signal that came meanwhile ends the process
    now, once: exit 128 + its number (130, 143), as a signal before the run's own
    handlers does, without a traceback.

    A signal blocked or ignored before choreo started stays so (``nohup``, a shell's
    background job): it is neither taken nor acted on here.
    """
    waiting = [sig for sig in HELD if sig not in before and not _ignored(sig)]
    if waiting:
        info = signal.sigtimedwait(waiting, 0)  # takes a pending one, without waiting
        if info is not None:
            sys.exit(128 + info.si_signo)
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    except KeyboardInterrupt:  # it came between the look and the unblock
        sys.exit(128 + signal.SIGINT)


def end_at_once_on_signal(streams: Streams, before: Collection[int]) -> None:
    """Once the command is over (signals held): flush what it wrote, then let SIGINT and
    SIGTERM end the process at once with 128 + their number, instead of a KeyboardInterrupt
    raised into the interpreter's exit (a traceback from threading's shutdown or an atexit
    hook, exit 0). A signal held meanwhile ends it now; Ctrl-C still ends an exit that
    hangs (a thread of a step's library that never ends)."""
    for stream in (streams.stdout, streams.stderr):
        # A closed or failed stream: the command has said so already.
        with contextlib.suppress(Exception):
            stream.flush()
    for sig in HELD:
        if not _ignored(sig):
            signal.signal(sig, _exit_at_once)
    # Run last at exit (registered after every other hook): the interpreter's own last
    # steps put the default handlers back, and a signal then killed the process.
    atexit.register(hold_signals)
    signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    os._exit(128 + signum)


def _ignored(sig: int) -> bool:
    return signal.getsignal(sig) is signal.SIG_IGN


def main() -> None:
    """Entry point of the ``choreo`` command: the one place the process exits."""
    try:
        before = hold_signals()
    except KeyboardInterrupt:  # a Ctrl-C just before the hold: its handler runs here
        sys.exit(128 + signal.SIGINT)
    from choreo_cli.cli.streams import Streams

    streams = Streams.for_process()
    if sys.argv[1:] == ["--version"]:
        # The most frequent call from scripts; typer alone costs ~70 ms to import.
        from choreo_cli.version import get_version

        streams.stdout.write(f"choreo {get_version()}\n")
        end_at_once_on_signal(streams, before)
        return
    if sys.argv[1:2] == ["run"] and "_CHOREO_COMPLETE" not in os.environ:
        # Plain `choreo run` command lines are read without typer (~0.2 s of start-up);
        # anything else, --help and shell completion included, goes to typer below.
        from choreo_cli.cli.run_options import read_plain_run_args

        options = read_plain_run_args(sys.argv[2:])
        if options is not None:
            from choreo_cli.cli.run_session import execute

            _import_run_modules()
            _plain_command(lambda: execute(options, streams=streams), streams, before)
    if sys.argv[1:2] == ["validate"] and "_CHOREO_COMPLETE" not in os.environ:
        # The same for `choreo validate`, which pre-commit and CI run on every change.
        from choreo_cli.cli.validate_files import check_files, read_plain_validate_args

        checked = read_plain_validate_args(sys.argv[2:])
        if checked is not None:
            import yaml  # noqa: F401  (an extension module: imported while signals are held)

            _plain_command(lambda: check_files(checked, streams), streams, before)
    from choreo_cli.cli.app import main as run_app

    try:
        release_signals(before)
        run_app(streams)
    finally:
        hold_signals()
        end_at_once_on_signal(streams, before)


def _plain_command(command: Callable[[], int], streams: Streams, before: Collection[int]) -> None:
    """Run a command read without typer, signals released, and exit with its code: 130
    when Ctrl-C came before the command's own handlers were in place (or after them)."""
    from choreo_cli.core.exit_codes import ExitCode

    code: int = ExitCode.INTERRUPTED
    try:
        try:
            release_signals(before)
            code = command()
        finally:
            hold_signals()
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    except Exception as exc:
        if not _caused_by_interrupt(exc):
            raise
        # The same, raised in code that wraps what it catches (a class body turns it
        # into "RuntimeError: Error calling __set_name__").
        code = ExitCode.INTERRUPTED
    end_at_once_on_signal(streams, before)
    sys.exit(int(code))


# Standard modules a run imports before its own signal handlers are in place.
_RUN_STANDARD_MODULES = (
    "importlib.resources",
    "logging",
    "pickle",
    "queue",
    "random",
    "selectors",
    "shutil",
    "tempfile",
    "traceback",
)


def _import_run_modules() -> None:
    """Import what a run imports before its own signal handlers are in place, while the
    signals are held: the extension modules (orjson, yaml), interrupted as they
    initialise, are what can crash; an interrupted import of the others printed a
    traceback or, raised in the import system's lock callbacks, was dropped. (The step
    modules are imported after the release: Ctrl-C must stop one that hangs.)"""
    import importlib

    for name in _RUN_STANDARD_MODULES:
        importlib.import_module(name)
    import orjson  # noqa: F401
    import yaml  # noqa: F401

    import choreo_cli.cli.console
    import choreo_cli.core.coordinator
    import choreo_cli.executors.thread
    import choreo_cli.jsonl.line_runner
    import choreo_cli.jsonl.reader
    import choreo_cli.pipeline.loader  # noqa: F401


def _caused_by_interrupt(exc: BaseException) -> bool:
    """True if a KeyboardInterrupt is in ``exc``'s chain of causes."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False
