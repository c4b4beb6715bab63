"""The files of `choreo run`, checked before anything is opened: one file for one role, and
every output writable (README "Commands").

A file is known by where its path leads: symlinks followed, ``..`` taken as the system
takes it, also for a file that does not exist yet, and for a path through
``/proc/self/fd`` (``/dev/stdout``, ``/dev/fd/1``) the descriptor it names. An existing
regular file is also known by its device and inode (a hard link is the same file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from choreo_cli.cli.run_options import UsageError

if TYPE_CHECKING:
    from choreo_cli.cli.run_options import RunOptions
    from choreo_cli.cli.streams import Streams

# The descriptors of a process, as the system names them once /proc/self or
# /proc/thread-self is followed.
_DESCRIPTORS = re.compile(r"/proc/(\d+)(?:/task/\d+)?/fd")
K = TypeVar("K")
# At most as many symlinks as Linux follows for one path.
_MAX_LINKS = 40

# What each output holds, for messages.
_WHAT = {
    "--output": "results",
    "--rejects": "rejects",
    "--summary-json": "the summary",
    "--checkpoint": "the checkpoint",
    "--metrics-file": "metrics",
    "--report": "the report",
}


@dataclasses.dataclass(frozen=True)
class Role:
    """A file named on the command line (``-``: a standard stream) for one role."""

    flag: str
    path: str
    #: In messages: ``--output out.jsonl``, or ``standard output`` for ``-``.
    name: str
    #: Where the path leads (see ``resolve``); for ``-`` the stream's descriptor; None for
    #: a stream with no descriptor (closed, or in memory).
    target: str | int | None


def resolve(path: str | Path) -> str | int:
    """Where ``path`` leads: an absolute path with every symlink followed, also when the
    file (or a link's target) does not exist yet; or, for a path through
    ``/proc/self/fd`` (``/dev/stdout``, ``/dev/fd/1``), the descriptor of this process it
    names (what it leads to is no path: ``pipe:[1234]``).

    Each step takes the real path of the parent, then the last name, so that
    ``sub/../out.jsonl`` is ``out.jsonl`` when ``sub`` is a directory.

    >>> resolve("/dev/stdout"), resolve("/proc/self/fd/2"), resolve("/tmp/../tmp/x/../y")
    (1, 2, '/tmp/y')
    """
    current = os.path.join(os.getcwd(), path)
    for _ in range(_MAX_LINKS):
        parent, name = os.path.split(current)
        if name in ("", ".", ".."):
            return os.path.realpath(current)
        parent = os.path.realpath(parent)
        match = _DESCRIPTORS.fullmatch(parent)
        if match is not None and int(match.group(1)) == os.getpid() and name.isdecimal():
            return int(name)
        current = os.path.join(parent, name)
        try:
            target = os.readlink(current)
        except OSError:
            return current  # not a link, or nothing there yet
        current = os.path.join(parent, target)
    return current  # a loop of links: opening it will say so


def run_roles(options: RunOptions, *, streams: Streams) -> list[Role]:
    """The files of a run, in the order of the command's help: input, output, rejects,
    summary, checkpoint, metrics, report (those given)."""
    given: list[tuple[str, str | Path | None, str, int | None]] = [
        ("--input", options.input, "standard input", streams.stdin_descriptor()),
        ("--output", options.output, "standard output", streams.stdout_descriptor()),
        ("--rejects", options.rejects, "", None),
        ("--summary-json", options.summary_json, "", None),
        ("--checkpoint", options.checkpoint, "", None),
        ("--metrics-file", options.metrics_file, "", None),
        ("--report", options.report, "", None),
    ]
    roles = []
    for flag, path, standard, descriptor in given:
        if path is None:
            continue
        text = str(path)
        if standard and text == "-":
            roles.append(Role(flag, text, standard, descriptor))
        else:
            roles.append(Role(flag, text, f"{flag} {text}", resolve(text)))
    return roles


def check_distinct_files(options: RunOptions, *, streams: Streams) -> None:
    """Refuse a file named for two roles: an output that is the input would be emptied
    before a record is read, two outputs would overwrite each other, and a summary or
    rejects on the stdout that carries the results would be spliced into them.

    Two roles are one file when their paths lead to the same place and that place is,
    or will be, a regular file; when they name the same descriptor (``-`` for stdout
    and ``/dev/stdout``); or when they are the same existing regular file (a hard link,
    ``-`` for a stdin or stdout redirected from or to it). What exists and is not a
    regular file (``/dev/null``, a terminal, a pipe) may serve several roles by name.
    """
    by_target: dict[str | int, Role] = {}
    by_inode: dict[tuple[int, int], Role] = {}
    for role in run_roles(options, streams=streams):
        target = role.target
        if target is None:
            continue  # closed, or in memory: no file to share
        try:
            info: os.stat_result | None = (
                os.fstat(target) if isinstance(target, int) else os.stat(target)
            )
        except (OSError, ValueError):
            info = None  # a file still to be made, or an input that cannot be read (said later)
        if info is None or isinstance(target, int) or stat.S_ISREG(info.st_mode):
            _claim(by_target, target, role)
        if info is not None and stat.S_ISREG(info.st_mode):
            _claim(by_inode, (info.st_dev, info.st_ino), role)


def _claim(seen: dict[K, Role], key: K, role: Role) -> None:
    """Note that ``role`` has the file ``key``; refuse it when another role has it."""
    other = seen.setdefault(key, role)
    if other is not role:
        raise UsageError(
            f"{role.name} is the same file as {other.name}: give each its own file",
            files=(role.flag, other.flag),
        )


def check_outputs_writable(options: RunOptions) -> None:
    """Refuse an output (``--output``, ``--rejects``, ``--summary-json``, ``--checkpoint``,
    ``--metrics-file``, ``--report``) that cannot be written, before anything is opened and any record runs.

    Nothing is changed: an existing regular file is opened for writing without being
    truncated, written nothing (which a file of /proc refuses), and closed; a file that does not exist is created and removed at once; a
    device or a pipe (which an open may block on, or act on) is only asked whether it
    may be written. A descriptor (``/dev/stderr``) is open already and is not checked.
    """
    for flag, path in (
        ("--output", None if options.output == "-" else options.output),
        ("--rejects", options.rejects),
        ("--summary-json", options.summary_json),
        ("--checkpoint", options.checkpoint),
        ("--metrics-file", options.metrics_file),
        ("--report", options.report),
    ):
        if path is None:
            continue
        problem = _why_unwritable(path)
        if problem is not None:
            raise UsageError(f"cannot write {_WHAT[flag]} to {path}: {problem}", files=(flag,))


def _why_unwritable(path: str | Path) -> str | None:
    """Why ``path`` cannot be written (a message), or None when it can."""
    target = resolve(path)
    if isinstance(target, int):
        return None
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return _why_not_creatable(path, target)
    except OSError as exc:
        return _reason(path, exc)
    if stat.S_ISDIR(info.st_mode):
        return os.strerror(errno.EISDIR)
    if stat.S_ISREG(info.st_mode):
        try:
            descriptor = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            return _reason(path, exc)
        try:
            # Writing nothing changes nothing, but asks the file system: a file of /proc
            # or /sys opens for writing (as root) and refuses every write.
            os.write(descriptor, b"")
        except OSError as exc:
            return _reason(path, exc)
        finally:
            os.close(descriptor)
        return None
    return None if os.access(target, os.W_OK) else os.strerror(errno.EACCES)


def _why_not_creatable(path: str | Path, target: str) -> str | None:
    try:
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        return None  # made meanwhile: it is there to be written
    except OSError as exc:
        return _reason(path, exc)
    os.close(descriptor)
    with contextlib.suppress(OSError):
        os.unlink(target)
    return None


def _reason(path: str | Path, exc: OSError) -> str:
    parent = Path(path).parent
    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not parent.is_dir():
        return f"no directory {parent}"
    return exc.strerror or str(exc)
