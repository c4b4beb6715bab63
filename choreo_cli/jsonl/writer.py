"""Result lines out: one JSON line per result, batched, flushed within 100 ms, pipe-safe."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson

# Results are written when this many bytes are pending: large writes, few system calls.
BATCH_BYTES = 64 * 1024
# A pending line waits at most this long for company before it is written and flushed.
FLUSH_INTERVAL = 0.05

_OPTIONS = orjson.OPT_APPEND_NEWLINE
# Data bag values: a dict key that is not a string is written as a string; a datetime or
# a dataclass instance is not JSON, so it goes through ``default`` (repr) like any other
# object orjson cannot write.
_VALUE_OPTIONS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
)


class WrittenResult(Protocol):
    """The part of ``choreo_cli.core.result.Result`` the writer reads."""

    index: int
    line: int | None
    input: Any
    error: Any
    bag: Any
    clean: bool

    @property
    def status(self) -> str: ...

    @property
    def errors(self) -> Sequence[Any]: ...

    @property
    def steps(self) -> Mapping[str, str]: ...

    @property
    def attempts(self) -> dict[str, int]: ...


OnWritten = Callable[[list[Any]], None]


class ResultWriter:
    """Write results as JSON lines to a binary stream, from one producer thread.

    ``write(result)`` encodes the line at once and queues it; lines go out in large
    batches, and a background thread writes and flushes whatever has waited
    ``flush_interval`` seconds, so a reader downstream sees each line within about
    100 ms even while the producer is busy with a slow record. Memory is bounded: past
    ``batch_bytes`` pending, ``write`` itself writes (and blocks while the sink is slow).

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
        self._include_input = include_input
        self._include_data = include_data
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
        # Lines of clean results, by whether they have a line number: (open, whole line).
        self._templates: dict[bool, tuple[bytes, bytes]] = {}
        self._skip_lines = SkipLines()
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
            self.encode(result) if self._on_written is None else (self.encode(result), result)
        )
        if len(queue) >= self._batch_lines:
            self._drain()

    def clean_line(self, steps: dict[str, str]) -> bytes | None:
        """The line of a result without errors as a template (``% (index, line)``), for
        ``put``; None when such lines need more than those two numbers (``include_input``,
        ``include_data``, or an ``on_written`` that needs the results).

        >>> import io
        >>> writer = ResultWriter(io.BytesIO())
        >>> writer.clean_line({"create": "succeeded"}) % (0, 1)
        b'{"index":0,"line":1,"status":"succeeded","error":null,"errors":[],"steps":{"create":"succeeded"}}\\n'
        >>> writer.close()
        """
        if self._include_input or self._include_data or self._on_written is not None:
            return None
        return _clean_template(steps, True)[1]

    @property
    def put(self) -> Callable[[bytes], None]:
        """Queue one finished line (from ``clean_line``); call ``drain_if_full`` now and then."""
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

    # -- encoding ---------------------------------------------------------------------

    def encode(self, result: WrittenResult) -> bytes:
        """The JSON line (newline included) for ``result``."""
        if result.clean or (
            result.status == "succeeded" and not result.errors and not result.attempts
        ):
            # Such results differ only in index, line (and input, data): format bytes.
            has_line = result.line is not None
            template = self._templates.get(has_line)
            if template is None:
                template = self._templates[has_line] = _clean_template(result.steps, has_line)
            args = (result.index, result.line) if has_line else result.index
            if not self._include_input and not self._include_data:
                return template[1] % args
            return self._with_values(template[0] % args, result)
        if result.status == "succeeded" and not result.attempts:
            return self._encode_skipped(result)
        return self._encode_full(result)

    def _encode_skipped(self, result: WrittenResult) -> bytes:
        head = self._skip_lines.head(result)
        if head is None:
            return self._encode_full(result)
        if not self._include_input and not self._include_data:
            return head + b"}\n"
        return self._with_values(head, result)

    def _encode_full(self, result: WrittenResult) -> bytes:
        error = result.error
        data: dict[str, Any] = {
            "index": result.index,
            "line": result.line,
            "status": result.status,
            "error": None if error is None else _error_json(error),
            "errors": [_error_json(e) for e in result.errors],
            "steps": result.steps,
        }
        attempts = result.attempts
        if attempts:
            data["attempts"] = attempts
        line = orjson.dumps(data, option=_OPTIONS)
        if not self._include_input and not self._include_data:
            return line
        return self._with_values(line[:-2], result)

    def _with_values(self, head: bytes, result: WrittenResult) -> bytes:
        """``head`` (an object without its closing brace) plus ``input`` and ``data``."""
        # User values are written on their own so that one that is not JSON falls back
        # to repr without touching the fields before it.
        parts = [head]
        if self._include_input:
            parts.append(b',"input":')
            parts.append(dump_value(result.input))
        if self._include_data:
            parts.append(b',"data":')
            parts.append(dump_value(result.bag.as_dict()))
        parts.append(b"}\n")
        return b"".join(parts)

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


def _error_json(error: Any) -> dict[str, Any]:
    """``error.to_json()``, also for an exception whose str() raises or is not UTF-8.

    A user's exception must cost its record a readable message, never the run.
    """
    try:
        data: dict[str, Any] = error.to_json()
    except Exception as exc:
        data = {
            "step": error.step,
            "phase": error.phase,
            "type": type(error.exception).__name__,
            "message": f"<str() of the exception failed: {_repr(exc)}>",
        }
    message = data["message"]
    if isinstance(message, str):
        data["message"] = _utf8(message)
    return data


def _utf8(text: str) -> str:
    """``text``, with what UTF-8 cannot hold (lone surrogates) escaped as ``\\udcff``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _clean_template(steps: Mapping[str, str], has_line: bool) -> tuple[bytes, bytes]:
    """%-format templates (object left open, whole line) for a result without errors."""
    head = b'{"index":%d,"line":' + (b"%d" if has_line else b"null")
    tail = b',"status":"succeeded","error":null,"errors":[],"steps":' + orjson.dumps(steps)
    opened = head + tail.replace(b"%", b"%%")
    return opened, opened + b"}\n"


class SkipLines:
    """Lines of records that ran every step while some prechecks skipped their jobs (the
    common line of a re-run), from a template per skip pattern with the messages put in.

    >>> from choreo_cli.core.coordinator import Coordinator, Step
    >>> from choreo_cli.errors import Skip
    >>> def exists(ctx, record):
    ...     raise Skip("exists")
    >>> coordinator = Coordinator()
    >>> coordinator.add_step(Step(name="create", precheck=exists, job=print))
    >>> SkipLines().head(coordinator.run({}, index=4, line=5)) + b"}"
    b'{"index":4,"line":5,"status":"succeeded","error":null,"errors":[{"step":"create","phase":"precheck","type":"Skip","message":"exists"}],"steps":{"create":"skipped"}}'
    """

    def __init__(self) -> None:
        self._templates: dict[tuple[Any, ...], bytes | None] = {}

    def head(self, result: WrittenResult) -> bytes | None:
        """The line of a succeeded ``result`` without retries, its object left open (no
        ``input``/``data``); None when it is not one or its line needs the general path."""
        if result.status != "succeeded" or result.attempts:
            return None
        errors = result.errors
        key = (result.line is not None, *[(e.step, e.phase, e.type) for e in errors])
        messages = _messages(errors)
        if messages is None:
            return None
        template = self._templates.get(key, b"")
        if template == b"":
            template = self._templates[key] = _skip_template(result, len(errors))
        if template is None:
            return None
        if key[0]:
            return template % (result.index, result.line, *messages)
        return template % (result.index, *messages)


class SkipTemplates:
    """Whole lines of records that succeeded while prechecks skipped jobs with Skip, for
    the fused serial loop: a %-template per pattern (a number whose bit i says the job of
    step i was skipped), learnt from the first Result of the pattern, which took the
    general path.

    >>> from choreo_cli.core.coordinator import Coordinator, Step
    >>> from choreo_cli.errors import Skip
    >>> from choreo_cli.core.result import ExecutionError
    >>> def exists(ctx, record):
    ...     raise Skip(f"{record} exists")
    >>> coordinator = Coordinator()
    >>> coordinator.add_step(Step(name="create", precheck=exists, job=print))
    >>> first = coordinator.run(7, index=0, line=1)
    >>> templates = SkipTemplates()
    >>> templates.learn(1, first)
    >>> line, pattern = templates.line(1, 1, 2, [ExecutionError("create", "precheck", Skip("8 exists"))])
    >>> line
    b'{"index":1,"line":2,"status":"succeeded","error":null,"errors":[{"step":"create","phase":"precheck","type":"Skip","message":"8 exists"}],"steps":{"create":"skipped"}}\\n'
    >>> pattern is first
    True
    """

    def __init__(self) -> None:
        # pattern -> (the template of a whole line, the Result the summary counts), or
        # None for a pattern whose lines take the general path
        self._known: dict[int, tuple[bytes, WrittenResult] | None] = {}

    def line(
        self, pattern: int, index: int, number: int, errors: Sequence[Any]
    ) -> tuple[bytes, WrittenResult] | None:
        """The line of record ``index`` (at line ``number``) and the Result standing for
        its outcome; None until its pattern was learnt, or when a message needs the
        general path (str() fails, or the text is not UTF-8)."""
        entry = self._known.get(pattern)
        if entry is None:
            return None
        messages = _messages(errors)
        if messages is None:
            return None
        return entry[0] % (index, number, *messages), entry[1]

    def learn(self, pattern: int, result: WrittenResult) -> None:
        """Learn ``pattern`` from ``result``, which took the general path."""
        if pattern in self._known or result.line is None:
            return
        template = None
        if result.status == "succeeded" and not result.attempts:
            template = _skip_template(result, len(result.errors))
        self._known[pattern] = None if template is None else (template + b"}\n", result)


def _messages(errors: Sequence[Any]) -> list[bytes] | None:
    """The JSON bytes of each error's message; None for a message str() cannot give, or
    that is not UTF-8 (the general path says so)."""
    try:
        return [orjson.dumps(_utf8(str(e.exception))) for e in errors]
    except Exception:
        return None


def _skip_template(result: WrittenResult, count: int) -> bytes | None:
    """A %-format template (object left open) of ``result``'s line, each of its ``count``
    error messages replaced by a ``%s`` slot for the message's JSON bytes; None when a
    step name holds the NUL characters that mark the slots."""
    if any("\0" in name for name in result.steps):
        return None
    has_line = result.line is not None
    data: dict[str, Any] = {
        "index": 0,
        "line": 0 if has_line else None,
        "status": "succeeded",
        "error": None,
        "errors": [{**_error_json(e), "message": f"\0{k}\0"} for k, e in enumerate(result.errors)],
        "steps": result.steps,
    }
    line = orjson.dumps(data, option=_OPTIONS).replace(b"%", b"%%")
    line = line.replace(b'{"index":0,"line":0', b'{"index":%d,"line":%d', 1)
    line = line.replace(b'{"index":0,"line":null', b'{"index":%d,"line":null', 1)
    for k in range(count):
        line = line.replace(b'"\\u0000%d\\u0000"' % k, b"%s", 1)
    return line[:-2]


def dump_value(value: Any) -> bytes:
    """JSON for a user value; what is not JSON (or not writable by orjson) becomes its repr.

    >>> dump_value({1: {2}})
    b'{"1":"{2}"}'
    """
    try:
        return orjson.dumps(value, default=_repr, option=_VALUE_OPTIONS)
    except TypeError:
        # A key orjson cannot write, an int past 64 bits, a cycle: clean up in Python.
        return orjson.dumps(_jsonable(value, 0), default=_repr, option=_VALUE_OPTIONS)


def _repr(value: Any) -> str:
    try:
        return _utf8(repr(value))
    except Exception as exc:
        return f"<{type(value).__qualname__} object: repr failed: {exc!r}>"


_SCALARS = (str, bool, float, type(None))
_INT64 = (-(2**63), 2**64 - 1)


def _jsonable(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else _repr(value)
    if depth > 200:
        return _repr(value)
    if isinstance(value, dict):
        return {
            (_utf8(k) if isinstance(k, str) else _key(k)): _jsonable(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    return _repr(value)


def _key(key: Any) -> str:
    if isinstance(key, (int, float, bool)) or key is None:
        return orjson.dumps(key).decode()
    return _repr(key)


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
