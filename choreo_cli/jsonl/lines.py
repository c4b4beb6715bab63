"""Result lines as bytes: the one place a result line is made, whole or from a template.

``LineEncoder.encode(result)`` is a Result's JSON line. Two kinds of record are common
enough that their lines come from a %-template made here from the general encoding:

- a record that ran every step without an error (``LineEncoder.clean_line``): only its
  index and line number vary;
- a record that ran every step while prechecks skipped jobs with ``Skip``, a re-run's
  common record (``SkipLines``): a template per ``SkipPattern`` (which steps' jobs were
  skipped), into which go the index, the line number and each Skip's message.

The writer queues these bytes; the fused line runner and the process and Dask workers
take theirs from here too, so every part writes the same line for the same record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from choreo_cli.errors import Skip

if TYPE_CHECKING:
    from choreo_cli.core.result import SkipPattern

_OPTIONS = orjson.OPT_APPEND_NEWLINE
# Data bag values: a dict key that is not a string is written as a string; a datetime or
# a dataclass instance is not JSON, so it goes through ``default`` (repr) like any other
# object orjson cannot write.
_VALUE_OPTIONS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
)


class WrittenResult(Protocol):
    """The part of ``choreo_cli.core.result.Result`` a result line is made of."""

    index: int
    line: int | None
    input: Any
    raw: bytes | None
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

    @property
    def skip_pattern(self) -> SkipPattern: ...


class LineEncoder:
    """The JSON line (newline included) of each Result, with ``input`` and ``data`` when asked.

    >>> from choreo_cli.core.coordinator import Coordinator, Step
    >>> coordinator = Coordinator()
    >>> coordinator.add_step(Step(name="double", job=lambda ctx, record: record * 2))
    >>> LineEncoder(include_data=True).encode(coordinator.run(2, index=0, line=1))
    b'{"index":0,"line":1,"status":"succeeded","error":null,"errors":[],"steps":{"double":"succeeded"},"data":{"precheck":{},"job":{"double":4}}}\\n'
    """

    def __init__(self, *, include_input: bool = False, include_data: bool = False) -> None:
        self.include_input = include_input
        self.include_data = include_data
        self._values = include_input or include_data
        # Lines of clean results, by whether they have a line number: (open, whole line).
        self._clean: dict[bool, tuple[bytes, bytes]] = {}
        self.skip_lines = SkipLines()

    def clean_line(self, steps: Mapping[str, str]) -> bytes | None:
        """The line of a numbered result without errors whose step outcomes are ``steps``,
        as a template (``% (index, line)``); None when such lines need more than those two
        numbers (``include_input`` or ``include_data``).

        >>> LineEncoder().clean_line({"create": "succeeded"}) % (0, 1)
        b'{"index":0,"line":1,"status":"succeeded","error":null,"errors":[],"steps":{"create":"succeeded"}}\\n'
        """
        if self._values:
            return None
        return _clean_template(steps, True)[1]

    def encode(self, result: WrittenResult) -> bytes:
        """The JSON line of ``result``: from a template when its kind has one, else whole."""
        if result.clean or (
            result.status == "succeeded" and not result.errors and not result.attempts
        ):
            # Such results differ only in index, line (and input, data): format bytes.
            has_line = result.line is not None
            template = self._clean.get(has_line)
            if template is None:
                template = self._clean[has_line] = _clean_template(result.steps, has_line)
            args = (result.index, result.line) if has_line else result.index
            if not self._values:
                return template[1] % args
            return self._with_values(template[0] % args, result)
        if result.status == "succeeded" and not result.attempts:
            values = self._values
            line = self.skip_lines.line_of(result, result.skip_pattern, whole=not values)
            if line is not None:
                return self._with_values(line, result) if values else line
        return self.encode_full(result)

    def encode_full(self, result: WrittenResult) -> bytes:
        """The JSON line of ``result`` made field by field: what every template must equal."""
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
        if not self._values:
            return line
        return self._with_values(line[:-2], result)

    def _with_values(self, head: bytes, result: WrittenResult) -> bytes:
        """``head`` (an object without its closing brace) plus ``input`` and ``data``."""
        # User values are written on their own so that one that is not JSON falls back
        # to repr without touching the fields before it.
        parts = [head]
        if self.include_input:
            parts.append(b',"input":')
            # An invalid line's bytes are not JSON: its input is null.
            raw = None if result.status == "invalid" else result.raw
            parts.append(dump_input(result.input, raw))
        if self.include_data:
            parts.append(b',"data":')
            parts.append(dump_value(result.bag.as_dict()))
        parts.append(b"}\n")
        return b"".join(parts)


# A skip pattern's templates: (the whole line, the object left open, the Result learnt from).
_Templates = tuple[bytes, bytes, WrittenResult]
_UNSEEN: Any = object()


class SkipLines:
    """Lines of records that ran every step while prechecks skipped jobs with ``Skip`` (a
    re-run's common record): a %-template per ``SkipPattern``, made from the general
    encoding of the first Result of the pattern, with each record's messages put in.

    The fused line runner asks by pattern (``line``, after ``learn``); the writer and the
    process and Dask workers ask with a Result (``line_of``). A record whose skips are not
    all plain ``Skip`` (a subclass, another exception: the type is in the line), or whose
    message str() cannot give or is not UTF-8, gets None: the general path writes it.

    >>> from choreo_cli.core.coordinator import Coordinator, Step
    >>> from choreo_cli.core.result import ExecutionError
    >>> def exists(ctx, record):
    ...     raise Skip(f"{record} exists")
    >>> coordinator = Coordinator()
    >>> coordinator.add_step(Step(name="create", precheck=exists, job=print))
    >>> first = coordinator.run(7, index=0, line=1)
    >>> skip_lines = SkipLines()
    >>> skip_lines.learn(first.skip_pattern, first)
    >>> line, stand_in = skip_lines.line(1, 1, 2, [ExecutionError("create", "precheck", Skip("8 exists"))])
    >>> line
    b'{"index":1,"line":2,"status":"succeeded","error":null,"errors":[{"step":"create","phase":"precheck","type":"Skip","message":"8 exists"}],"steps":{"create":"skipped"}}\\n'
    >>> stand_in is first
    True
    """

    def __init__(self) -> None:
        # pattern -> its templates, or None when its lines take the general path; for
        # numbered lines (every line of `choreo run`) and for results without a line.
        self._numbered: dict[SkipPattern, _Templates | None] = {}
        self._unnumbered: dict[SkipPattern, _Templates | None] = {}

    def line(
        self, pattern: SkipPattern, index: int, number: int, errors: Sequence[Any]
    ) -> tuple[bytes, WrittenResult] | None:
        """The whole line of record ``index`` (at line ``number``) of ``pattern``, whose
        ``errors`` are its prechecks' Skips, and the Result standing for its outcome (the
        pattern's first); None until the pattern was learnt, or for the general path."""
        templates = self._numbered.get(pattern)
        if templates is None:
            return None
        messages = skip_messages(errors)
        if messages is None:
            return None
        return templates[0] % (index, number, *messages), templates[2]

    def learn(self, pattern: SkipPattern, result: WrittenResult) -> None:
        """Learn ``pattern`` from ``result``, a numbered Result of it that took the general
        path (succeeded, without retries)."""
        if (
            pattern in self._numbered
            or result.line is None
            or result.status != "succeeded"
            or result.attempts
            or skip_messages(result.errors) is None
        ):
            return
        self._numbered[pattern] = _skip_templates(result)

    def line_of(
        self, result: WrittenResult, pattern: SkipPattern, *, whole: bool = True
    ) -> bytes | None:
        """The line of ``result`` (succeeded, without retries, of ``pattern``): whole, or
        its object left open (for ``input`` and ``data``); learns the pattern first."""
        messages = skip_messages(result.errors)
        if messages is None:
            return None
        number = result.line
        known = self._unnumbered if number is None else self._numbered
        templates: _Templates | None = known.get(pattern, _UNSEEN)
        if templates is _UNSEEN:
            templates = known[pattern] = _skip_templates(result)
        if templates is None:
            return None
        template = templates[0] if whole else templates[1]
        if number is None:
            return template % (result.index, *messages)
        return template % (result.index, number, *messages)


def skip_messages(errors: Sequence[Any]) -> list[bytes] | None:
    """The JSON bytes of each error's message when every error is a plain ``Skip`` (the
    type a skip template spells); None when one is not, or for a message str() cannot
    give or that is not UTF-8 (orjson refuses it: the general path escapes it)."""
    dumps = orjson.dumps
    try:
        messages = [dumps(str(e.exception)) for e in errors if type(e.exception) is Skip]
    except Exception:
        return None
    return messages if len(messages) == len(errors) else None


def _skip_templates(result: WrittenResult) -> _Templates | None:
    """The templates of ``result``'s pattern: its general encoding with a ``%d`` for the
    index and the line number and a ``%s`` for each error's message (JSON bytes); None
    when a step name holds the NUL characters that mark the slots."""
    if any("\0" in name for name in result.steps):
        return None
    has_line = result.line is not None
    errors = result.errors
    data: dict[str, Any] = {
        "index": 0,
        "line": 0 if has_line else None,
        "status": "succeeded",
        "error": None,
        "errors": [{**_error_json(e), "message": f"\0{k}\0"} for k, e in enumerate(errors)],
        "steps": result.steps,
    }
    line = orjson.dumps(data, option=_OPTIONS).replace(b"%", b"%%")
    line = line.replace(b'{"index":0,"line":0', b'{"index":%d,"line":%d', 1)
    line = line.replace(b'{"index":0,"line":null', b'{"index":%d,"line":null', 1)
    for k in range(len(errors)):
        line = line.replace(b'"\\u0000%d\\u0000"' % k, b"%s", 1)
    opened = line[:-2]
    return opened + b"}\n", opened, result


def _clean_template(steps: Mapping[str, str], has_line: bool) -> tuple[bytes, bytes]:
    """%-format templates (object left open, whole line) for a result without errors."""
    head = b'{"index":%d,"line":' + (b"%d" if has_line else b"null")
    tail = b',"status":"succeeded","error":null,"errors":[],"steps":' + orjson.dumps(steps)
    opened = head + tail.replace(b"%", b"%%")
    return opened, opened + b"}\n"


def _error_json(error: Any) -> dict[str, Any]:
    """``error.to_json()``, its message valid UTF-8 (a lone surrogate escaped).

    A user's exception must cost its record a readable message, never the run: one
    whose str() raises has ``exception_message``'s message, from every executor.
    """
    data: dict[str, Any] = error.to_json()
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


def dump_value(value: Any) -> bytes:
    """JSON for a user value; what is not JSON (or not writable by orjson) becomes its repr.

    >>> dump_value({1: {2}, "n": -(2**70)})
    b'{"1":"{2}","n":-1180591620717411303424}'
    """
    try:
        return orjson.dumps(value, default=_repr, option=_VALUE_OPTIONS)
    except TypeError:
        # A key orjson cannot write, an int past 64 bits, a cycle: clean up in Python.
        return orjson.dumps(_jsonable(value, 0), default=_repr, option=_VALUE_OPTIONS)


def _exact_int(value: int) -> Any:
    """An integer past 64 bits as orjson writes it: its digits (a Fragment); its repr
    when Python will not write it (more than ``sys.get_int_max_str_digits()`` digits)."""
    try:
        return orjson.Fragment(int.__repr__(value))
    except ValueError:
        return _repr(value)


def dump_input(value: Any, raw: bytes | None) -> bytes:
    """JSON for a record read from ``raw`` (its line, or None): the line's own JSON text,
    which holds the record as it was read (any depth, integers of any size), without
    re-encoding it; ``dump_value(value)`` for a record that came from no line.

    >>> dump_input({"id": 2**70}, b'\\t{"id":\\t1180591620717411303424} \\r\\n')
    b'{"id": 1180591620717411303424}'
    """
    if raw is None:
        return dump_value(value)
    # The line ending and the whitespace around the value go. A tab or CR in a JSON line
    # is whitespace between tokens (inside a string it must be escaped): a space keeps
    # the output free of control characters.
    return raw.strip(b" \t\r\n").replace(b"\t", b" ").replace(b"\r", b" ")


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
        return value if _INT64[0] <= value <= _INT64[1] else _exact_int(value)
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
    if isinstance(key, int) and not isinstance(key, bool):
        try:
            return int.__repr__(key)  # as OPT_NON_STR_KEYS writes it, past 64 bits too
        except ValueError:
            return _repr(key)
    if isinstance(key, (float, bool)) or key is None:
        return orjson.dumps(key).decode()
    return _repr(key)
