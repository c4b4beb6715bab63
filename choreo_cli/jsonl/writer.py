"""Result lines out: one JSON line per result, batched, flushed within 100 ms, pipe-safe.

The bytes of each line come from ``choreo_cli.jsonl.lines``; this module queues and
writes them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from choreo_cli.jsonl.lines import LineEncoder, WrittenResult

# Results are written when this many bytes are pending: large writes, few system calls.
BATCH_BYTES = 64 * 1024
# A pending line waits at most this long for company before it is written and flushed.
FLUSH_INTERVAL = 0.05

OnWritten = Callable[[list[Any]], None]


class ResultWriter:
    """Write results as JSON lines to a binary stream, from one producer thread.

    ``write(result)`` encodes the line at once (``encoder``, a ``LineEncoder``) and
    queues it; lines go out in large batches, and a background thread writes and
    flushes whatever has waited ``flush_interval`` seconds, so a reader downstream sees
    each line within about 100 ms even while the producer is busy with a slow record.
    Memory is bounded: past ``batch_bytes`` pending, ``write`` itself writes (and blocks
    while the sink is slow).

    ``on_written(results)`` is called with each batch of results, in order, once their
    lines are written and flushed (from the producer's or the flusher's thread, never
    both at once). A closed pipe sets ``broken``; another ``OSError`` (disk full) sets
    ``error`` and ``error_message``; either calls ``on_failure()`` once and later lines
    are dropped: the caller stops the run and exits 141 or 1. Nothing raises out of
    ``write`` or ``close`` for a failing sink. Both callbacks may run on the background
    thread: they should only record and signal (set a flag, interrupt the coordinator),
    and ``on_failure`` should not raise (on that thread its exception is dropped).

    >>> import io
    >>> sink = io.BytesIO()
    >>> with ResultWriter(sink) as writer:
    ...     pass  # writer.write(result) for each result
    >>> sink.getvalue()
    b''
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        include_input: bool = False,
        include_data: bool = False,
        on_written: OnWritten | None = None,
        on_failure: Callable[[], None] | None = None,
        batch_bytes: int = BATCH_BYTES,
        flush_interval: float = FLUSH_INTERVAL,
        owns_stream: bool = False,
        name: str | None = None,
    ) -> None:
        self._stream = stream
        self.encoder = LineEncoder(include_input=include_input, include_data=include_data)
        self._encode = self.encoder.encode
        self._on_written = on_written
        self._on_failure = on_failure
        self._batch_bytes = batch_bytes
        self._interval = flush_interval
        self._owns_stream = owns_stream
        self.name = name if name is not None else str(getattr(stream, "name", "output"))
        self.broken = False
        self.error: BaseException | None = None
        self.error_message: str | None = None
        self.lines_written = 0
        self._lines_taken = 0  # lines popped from the queue to be written (or dropped)
        self._failed = False
        self._notified = False
        self._closed = False
        # Pending lines (with their results when on_written is set). The producer only
        # appends (atomic: no lock per line); whoever writes pops from the left under
        # _write_lock, so batches go out whole and in order.
        self._queue: deque[Any] = deque()
        # About batch_bytes of typical small lines; past it the producer writes itself
        # (and so blocks while the sink is slow: memory stays bounded).
        self._batch_lines = max(1, batch_bytes // 64)
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="choreo-output", daemon=True)
        self._flusher.start()

    @property
    def failed(self) -> bool:
        """True once the sink failed (closed pipe or another write error)."""
        return self._failed

    def write(self, result: WrittenResult) -> None:
        """Queue ``result``'s line; write the batch when it is large enough."""
        if self._failed:
            return
        if self._closed:
            raise ValueError(f"write to a closed ResultWriter ({self.name})")
        queue = self._queue
        queue.append(
            self._encode(result) if self._on_written is None else (self._encode(result), result)
        )
        if len(queue) >= self._batch_lines:
            self._drain()

    def clean_line(self, steps: Mapping[str, str]) -> bytes | None:
        """The line of a result without errors as a template (``% (index, line)``), for
        ``put``; None when such lines need more than those two numbers (``include_input``,
        ``include_data``, or an ``on_written`` that needs the results).

        >>> import io
        >>> writer = ResultWriter(io.BytesIO())
        >>> writer.clean_line({"create": "succeeded"}) % (0, 1)
        b'{"index":0,"line":1,"status":"succeeded","error":null,"errors":[],"steps":{"create":"succeeded"}}\\n'
        >>> writer.close()
        """
        if self._on_written is not None:
            return None
        return self.encoder.clean_line(steps)

    @property
    def lines_queued(self) -> int:
        """Lines handed to the writer so far, written or pending: read from any thread
        (a progress display), it costs the producer nothing per line."""
        return self._lines_taken + len(self._queue)

    @property
    def put(self) -> Callable[[bytes], None]:
        """Queue one finished line (from ``clean_line`` or ``choreo_cli.jsonl.lines``); call
        ``drain_if_full`` now and then."""
        return self._queue.append

    def drain_if_full(self) -> None:
        """Write the pending lines if there are enough of them for a batch."""
        if len(self._queue) >= self._batch_lines:
            self._drain()

    def flush(self) -> None:
        """Write and flush every pending line now."""
        self._drain()

    def close(self) -> None:
        """Write and flush everything, stop the flusher; close the stream if it was opened here."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._flusher.join()
        self._drain()
        if self._owns_stream:
            try:
                self._stream.close()
            except (OSError, ValueError) as exc:
                self._fail(exc, sink=True)
        self._notify_failure()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------

    def _flush_loop(self) -> None:
        # Every interval, write what is pending: a line waits at most about that long,
        # however long the producer is busy with its next record.
        stop = self._stop
        while not stop.wait(self._interval):
            if self._queue:
                # An exception from on_failure has nobody to go to on this thread.
                with contextlib.suppress(BaseException):
                    self._drain()

    def _drain(self) -> None:
        with self._write_lock:
            queue = self._queue
            count = len(queue)
            if not count:
                return
            popleft = queue.popleft
            items = [popleft() for _ in range(count)]
            self._lines_taken += count
            if self._failed:
                return
            if self._on_written is None:
                lines, results = items, []
            else:
                lines = [line for line, _ in items]
                results = [result for _, result in items]
            try:
                self._stream.write(b"".join(lines))
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._fail(exc, sink=True)
            else:
                self.lines_written += count
                if self._on_written is not None:
                    try:
                        self._on_written(results)
                    except Exception as exc:
                        self._fail(exc, sink=False)
        self._notify_failure()

    def _fail(self, exc: BaseException, *, sink: bool) -> None:
        if self._failed:
            return
        self._failed = True
        if sink and isinstance(exc, OSError):
            # Python flushes stdout once more at exit: on a closed pipe or a full disk
            # that prints "Exception ignored ... BrokenPipeError" after our own message.
            _silence(self._stream)
        if sink and (
            isinstance(exc, BrokenPipeError)
            or (isinstance(exc, OSError) and exc.errno == errno.EPIPE)
        ):
            self.broken = True
            self.error_message = f"cannot write results to {self.name}: the reader closed the pipe"
            return
        self.error = exc
        if not sink:
            self.error_message = (
                f"results were written to {self.name} but on_written failed: "
                f"{type(exc).__name__}: {exc}"
            )
        elif isinstance(exc, OSError) and exc.strerror:
            self.error_message = f"cannot write results to {self.name}: {exc.strerror}"
        else:
            self.error_message = f"cannot write results to {self.name}: {exc}"

    def _notify_failure(self) -> None:
        # Called outside the locks, so the callback may use the writer (or stop the run).
        if self._failed and not self._notified:
            self._notified = True
            if self._on_failure is not None:
                self._on_failure()


def _silence(stream: BinaryIO) -> None:
    """Point a failed stream's file descriptor at /dev/null, so later flushes are silent."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


def build_writer(
    path: str | Path,
    *,
    include_input: bool = False,
    include_data: bool = False,
    on_written: OnWritten | None = None,
    on_failure: Callable[[], None] | None = None,
) -> ResultWriter:
    """A writer to the file at ``path``, which it opens and closes; raises OSError if
    unopenable. For standard output (which only the command line touches) give
    ``ResultWriter`` the stream.

    Example: ``with build_writer("results.jsonl", include_input=True) as writer: writer.write(result)``.
    """
    if str(path) == "-":
        raise ValueError("'-' is standard output: give ResultWriter the stream to write to")
    stream = open(path, "wb")  # noqa: SIM115 - the writer closes it
    return ResultWriter(
        stream,
        include_input=include_input,
        include_data=include_data,
        on_written=on_written,
        on_failure=on_failure,
        owns_stream=True,
        name=str(path),
    )
