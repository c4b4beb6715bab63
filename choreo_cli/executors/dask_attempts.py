"""Worker side of `--executor dask` (on each Dask worker): files that outlive a worker's death.

What a Dask worker that died left on its machine, so that a new attempt of its batch
neither loses a record nor runs one twice. Only ``dask_worker`` uses it: the parent
knows nothing of these files (it only gives each batch a token that its attempts share).

Each worker process keeps a small memory-mapped file (per thread: the token of the batch
it runs and the index of the record running) and, per thread, a journal of the results
it has flushed. When Dask runs a batch again because its worker died, the new attempt
(on the same machine) reads what the dead process left: the results it journalled come
back, the record it was running fails with WorkerDied, and the rest of the batch runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import pickle
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from choreo_cli.executors.base import WorkerDied
from choreo_cli.executors.portable import encode_chunk
from choreo_cli.executors.runner import BatchArgs

# A progress slot's record index once its batch has ended (every record ran).
BATCH_ENDED = 1 << 62
# How long a batch waits for a process that ran it before and stopped answering to be
# gone (the scheduler can learn of a death a moment before the process has ended).
DEATH_WAIT_SECONDS = 2.0
_HEADER = 128  # the worker's address, UTF-8, NUL-padded
_SLOTS = 64  # one per thread that runs batches (threads past that are not tracked)
_SLOT = struct.Struct("<qq")  # (batch token, index of the record running)


def progress_dir(run_id: str) -> Path:
    """Where this machine's Dask workers record what they are running, for run ``run_id``."""
    return Path(tempfile.gettempdir()) / f"choreo-dask-{run_id}"


class ProgressFile:
    """This worker process's record of what each of its threads is running, kept on disk.

    Per thread that runs batches, a slot of the memory-mapped file holds the batch's token
    and the index of the record running (writing it costs a store; what was written stays
    in the file when the process dies), and a journal file the batch's results as they are
    flushed. When Dask runs a batch again (its worker died), the new attempt reads what a
    dead process on this machine left: results before the record that was running come
    back from the journal, that record killed the worker and is not run again.
    """

    def __init__(self, run_id: str, address: str) -> None:
        directory = progress_dir(run_id)
        directory.mkdir(mode=0o700, exist_ok=True)
        self.path = directory / str(os.getpid())
        size = _HEADER + _SLOTS * _SLOT.size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._map[: _HEADER - 1] = address.encode()[: _HEADER - 1].ljust(_HEADER - 1, b"\0")
        for k in range(_SLOTS):
            _SLOT.pack_into(self._map, _HEADER + k * _SLOT.size, 0, -1)
        self._claimed = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._slots: list[_Slot] = []

    def slot(self) -> _Slot | None:
        """This thread's slot (None past the first 64 threads: those are not tracked)."""
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            with self._lock:
                k = self._claimed
                self._claimed += 1
            if k >= _SLOTS:
                return None
            slot = _Slot(self._map, k, Path(f"{self.path}.{k}"))
            self._slots.append(slot)
            self._local.slot = slot
        return slot

    def remove(self) -> None:
        """Remove this process's files, and those of dead processes; the folder once empty."""
        for slot in self._slots:
            slot.close()
        directory = self.path.parent
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                pid = entry.name.partition(".")[0]
                if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
                    os.unlink(entry.path)
            directory.rmdir()


class _Slot:
    """One thread's cells in the progress file, and its journal of flushed results."""

    __slots__ = ("_fd", "current", "journal", "token")

    def __init__(self, view: mmap.mmap, k: int, journal: Path) -> None:
        offset = _HEADER + k * _SLOT.size
        self.token = ctypes.c_int64.from_buffer(view, offset)
        self.current = ctypes.c_int64.from_buffer(view, offset + 8)
        self.journal = journal
        self._fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)

    def begin(self, token: int) -> None:
        # In this order: a death at any point leaves no journal that names another batch.
        self.current.value = -1
        os.ftruncate(self._fd, 0)
        self.token.value = token

    def write(self, part: bytes) -> None:
        os.write(self._fd, _FRAME.pack(self.token.value, len(part)) + part)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


_FRAME = struct.Struct("<qQ")  # (batch token, length) before each journalled part


class _Earlier:
    """What a dead attempt of a batch left: its journalled parts, the record it was running."""

    def __init__(self, parts: list[bytes], index: int, who: str) -> None:
        self.parts = parts
        self.index = index
        self.who = who

    def resume(self, args: BatchArgs) -> tuple[BatchArgs | None, Callable[[int], Any]]:
        """The batch's records left to run (None: none), and the errors of those not to run.

        Before the tail go the parts the dead attempt journalled, then (JSON lines) the
        clean records it ran since: a record that did not end clean is journalled at once,
        so the others were clean. Otherwise those records' results were lost with it.
        """
        start, positions, values, _ = args
        parse = type(values) is bytes
        count = values.count(b"\n") + 1 if parse else len(values)
        covered = sum(pickle.loads(part)[1][0] for part in self.parts)
        index, who = self.index, self.who
        ended = index == BATCH_ENDED

        def number(k: int) -> int:
            return start + (k if positions is None else positions[k])

        stop = count if ended else next((k for k in range(count) if number(k) == index), count)
        if parse and stop > covered:
            self.parts.append(encode_chunk((stop - covered, None, None, []), 0.0))
            covered = stop
        last_ran = number(stop - 1) if stop > covered else -1

        def died(record: int) -> BaseException | None:
            if record == index:
                return WorkerDied(f"{who} while running this record")
            if record <= last_ran:
                return WorkerDied(f"{who} after this record ran, before its result came back")
            return None

        return (_tail(args, covered) if covered < count else None), died


def _tail(args: BatchArgs, skip: int) -> BatchArgs:
    """``args`` without its first ``skip`` records."""
    start, positions, values, lines = args
    # JSON lines arrive joined with newlines (none is inside a line).
    values = b"\n".join(values.split(b"\n")[skip:]) if type(values) is bytes else values[skip:]
    lines = None if lines is None else lines[skip:]
    if positions is None:
        return (start + skip, None, values, lines)
    return (start, positions[skip:], values, lines)


def earlier_attempt(run_id: str, token: int) -> _Earlier | None:
    """What the furthest dead attempt of batch ``token`` on this machine left, or None
    (the common case: this is its first attempt, or the last ran on another machine)."""
    found: list[tuple[int, int, str, Path]] = []  # (index, pid, worker, journal)
    me = os.getpid()
    try:
        entries = [entry for entry in os.scandir(progress_dir(run_id)) if entry.name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            data = Path(entry.path).read_bytes()
        except OSError:
            continue
        running = [
            (k, index)
            for k in range(_SLOTS)
            for tag, index in [_SLOT.unpack_from(data, _HEADER + k * _SLOT.size)]
            if tag == token and index >= 0
        ]
        if not running or not _gone(pid):
            continue
        address = data[:_HEADER].rstrip(b"\0").decode(errors="replace")
        for k, index in running:
            found.append((index, pid, address, Path(f"{entry.path}.{k}")))
    if not found:
        return None
    index, pid, address, journal = max(found)
    parts: list[bytes] = []
    with contextlib.suppress(OSError):
        data = journal.read_bytes()
        at = 0
        while at + _FRAME.size <= len(data):
            tag, length = _FRAME.unpack_from(data, at)
            at += _FRAME.size
            if tag != token or at + length > len(data):
                break
            parts.append(data[at : at + length])
            at += length
    return _Earlier(parts, index, f"Dask worker {address} (process {pid}) died")


def _alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, dead but not yet reaped, is not alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")


def _gone(pid: int) -> bool:
    """True once process ``pid`` has ended, waiting a moment for one that is ending."""
    deadline = time.monotonic() + DEATH_WAIT_SECONDS
    while _alive(pid):
        if time.monotonic() > deadline:
            return False  # still running (a worker cut off from the scheduler): not a death
        time.sleep(0.02)
    return True
