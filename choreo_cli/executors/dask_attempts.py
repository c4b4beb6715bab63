"""Worker side of `--executor dask` (on each Dask worker): files that outlive a worker's death.

What a Dask worker that died left on its machine, so that a new attempt of its batch
neither loses a record nor runs one twice. ``dask_worker`` uses it: the parent knows
nothing of these files (it only gives each batch a token that its attempts share), but
for sweeping the run's folder once the local cluster it started is closed.

Each worker process keeps a small memory-mapped file (per thread: the token of the batch
it runs and the index of the record running) and, per thread, a memory-mapped journal of
the batch's results: each record's before the next record starts, except those of
records that ran clean with an empty bag, which need none (``BatchRunner.run``'s
``journal``). When Dask runs a batch again because its worker died, the new attempt (on
the same machine) reads what the dead process left: the results it journalled come
back, the records between them ran clean, the record it was running fails with
WorkerDied, and the rest of the batch runs.
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
from choreo_cli.executors.portable import Chunk, encode_chunk
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
    in the file when the process dies), and a journal file the batch's results, record by
    record (stores too). When Dask runs a batch again (its worker died), the new attempt
    reads what a dead process on this machine left: results before the record that was
    running come back from the journal, that record killed the worker and is not run again.
    """

    def __init__(self, run_id: str, address: str) -> None:
        directory = progress_dir(run_id)
        self.path = directory / str(os.getpid())
        size = _HEADER + _SLOTS * _SLOT.size
        for attempt in range(3):
            directory.mkdir(mode=0o700, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                break
            except FileNotFoundError:
                # Another worker's sweep removed the folder while it was still empty
                # (between the mkdir and the open): make it again; once this file is in
                # it, a sweep leaves it.
                if attempt == 2:
                    raise
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
        sweep(self.path.parent)


def sweep(directory: Path) -> None:
    """Remove the files of this process and of dead processes from a run's progress
    folder, then the folder if nothing is left in it.

    Every worker of the machine sweeps as the run ends, at the same time, and a worker
    that died and was restarted left files of its dead process: each removal is tried on
    its own, and one that another worker made first (ENOENT) is fine. A single guard
    around the whole sweep stopped at the first such file, and the folder was left.
    """
    try:
        entries = [entry.name for entry in os.scandir(directory)]
    except OSError:
        return  # removed already, or never made
    me = os.getpid()
    for name in entries:
        pid = name.partition(".")[0]
        if pid.isdigit() and (int(pid) == me or not _alive(int(pid))):
            with contextlib.suppress(OSError):
                os.unlink(directory / name)
    with contextlib.suppress(OSError):  # not empty: a live worker's files, it sweeps last
        directory.rmdir()


class _Slot:
    """One thread's cells in the progress file, and its journal of the batch's results."""

    __slots__ = ("_at", "_fd", "_map", "current", "journal", "token")

    def __init__(self, view: mmap.mmap, k: int, journal: Path) -> None:
        offset = _HEADER + k * _SLOT.size
        self.token = ctypes.c_int64.from_buffer(view, offset)
        self.current = ctypes.c_int64.from_buffer(view, offset + 8)
        self.journal = journal
        self._fd = os.open(journal, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._map: mmap.mmap | None = None
        self._at = 0
        self._grow(_JOURNAL_START)

    def begin(self, token: int) -> None:
        # In this order: a death at any point leaves no journal that names another batch.
        self.current.value = -1
        self._at = 0
        assert self._map is not None
        self._map[: _FRAME.size] = _NO_FRAME
        self.token.value = token

    def write(self, position: int, entry: bytes) -> None:
        """Journal ``entry`` (what ``dask_worker.run_batch`` puts there) at ``position``.

        A store into a shared memory map, no system call: what was stored stays in the
        file when the process dies. The frame's header goes last, after the next frame's
        header was cleared: a death at any point leaves only whole frames before it.
        """
        at = self._at
        end = at + _FRAME.size + len(entry)
        if end + _FRAME.size > len(self._map):  # type: ignore[arg-type]
            self._grow(2 * (end + _FRAME.size))
        view = self._map
        assert view is not None
        view[end : end + _FRAME.size] = _NO_FRAME
        view[at + _FRAME.size : end] = entry
        _FRAME.pack_into(view, at, self.token.value, position, len(entry))
        self._at = end

    def _grow(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        old, self._map = self._map, mmap.mmap(self._fd, size)
        if old is not None:
            old.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, BufferError):
            if self._map is not None:
                self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


# Before each journalled entry: (batch token, the record's position in the batch, length).
_FRAME = struct.Struct("<qqQ")
_NO_FRAME = bytes(_FRAME.size)
_JOURNAL_START = 1 << 16


def entry_frames(data: bytes, token: int) -> list[tuple[int, bytes]]:
    """The whole frames of batch ``token`` at the start of a journal: (position, entry)."""
    frames = []
    at = 0
    while at + _FRAME.size <= len(data):
        tag, position, length = _FRAME.unpack_from(data, at)
        at += _FRAME.size
        if tag != token or at + length > len(data):
            break
        frames.append((position, data[at : at + length]))
        at += length
    return frames


class _Earlier:
    """What a dead attempt of a batch left: its journal, the record it was running."""

    def __init__(self, frames: list[tuple[int, bytes]], index: int, who: str) -> None:
        self.frames = frames
        self.index = index
        self.who = who
        self.chunk: Chunk | None = None  # the results taken back (see resume)
        self.parts: list[bytes] = []  # the same, as the part of a batch's results
        self.done = 0  # how many of the batch's records they cover

    def resume(self, args: BatchArgs) -> tuple[BatchArgs | None, Callable[[int], Any]]:
        """The batch's records left to run (None: none), and the error of those not to run.

        The dead attempt journalled each record's results before the next record started
        (``dask_worker.run_batch``), but for records that ran clean with an empty bag: a
        position without an entry is such a record. Its records up to the one it was
        running come back as one chunk (``self.parts``); that one killed the worker and
        fails. An attempt that ended (its worker died before its result came back) says
        how many records it ran: the records its stop flag kept from starting run now.
        """
        start, positions, values, _ = args
        parse = type(values) is bytes
        count = values.count(b"\n") + 1 if parse else len(values)
        index, who = self.index, self.who

        def number(k: int) -> int:
            return start + (k if positions is None else positions[k])

        if index == BATCH_ENDED:  # its last frame, empty, is at the number of records it ran
            ran = next((k for k, entry in self.frames if not entry), 0)
        else:
            ran = next((k for k in range(count) if number(k) == index), count)
        ran = min(ran, count)
        chunk = _rebuild(self.frames, ran, maps=not parse)
        self.done = chunk[0]
        if self.done:
            self.chunk = chunk
            self.parts = [encode_chunk(chunk, 0.0)]
        # Only when an entry did not unpickle: the records from it on ran, their results lost.
        lost = number(ran - 1) if self.done < ran else -1

        def died(record: int) -> BaseException | None:
            if record == index:
                return WorkerDied(f"{who} while running this record")
            if record <= lost:
                return WorkerDied(f"{who} after this record ran, before its result came back")
            return None

        return (_tail(args, self.done) if self.done < count else None), died


def _rebuild(frames: list[tuple[int, bytes]], ran: int, *, maps: bool) -> Chunk:
    """The chunk of the first ``ran`` records of a batch from its journal's ``frames``
    (``dask_worker.run_batch`` says what they hold); it stops short of an entry that does
    not unpickle (a bag value that pickled but does not unpickle)."""
    jobs: list[Any] = [None] * ran
    pres: list[Any] = [None] * ran
    others: list[tuple[int, tuple[Any, ...]]] = []
    for position, data in frames:
        if position >= ran:
            continue
        try:
            entry = pickle.loads(data)
        except Exception:
            ran = position
            break
        if len(entry) == 1:  # a record that is not clean: its payload
            others.append((position, entry[0]))
        elif len(entry) == 2:  # a clean record: its bag's two maps
            jobs[position], pres[position] = entry
        elif len(entry) == 4:  # a chunk from the batch's start, taken back from an earlier death
            size, chunk_jobs, chunk_pres, chunk_others = entry
            if chunk_jobs is not None:
                jobs[position : position + size] = chunk_jobs
            if chunk_pres is not None:
                pres[position : position + size] = chunk_pres
            others.extend((position + k, payload) for k, payload in chunk_others)
    del jobs[ran:], pres[ran:]
    others = sorted(item for item in others if item[0] < ran)
    return (
        ran,
        jobs if maps and any(m is not None for m in jobs) else None,
        pres if maps and any(m is not None for m in pres) else None,
        others,
    )


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
    frames: list[tuple[int, bytes]] = []
    with contextlib.suppress(OSError):
        frames = entry_frames(journal.read_bytes(), token)
    return _Earlier(frames, index, f"Dask worker {address} (process {pid}) died")


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
