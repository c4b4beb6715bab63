"""Integers of any size, exact: the input lines whose numbers orjson cannot read exactly.

orjson reads an integer literal beyond the 64-bit range (above 2**64 - 1, below -2**63) as
a float, or refuses it when the float would be infinite (300 digits and more). Such a
literal is a run of at least 20 digits, or a minus and 19 digits. ``has_wide_digits``
finds such runs in a whole chunk of input at once (a translate and two substring
searches: a few tens of ns per line); only the lines of a chunk with one are parsed by
``loads_exact``, which parses a line with such a run with the standard library's exact
parser, accepting what orjson accepts. Every other line costs one ``orjson.loads``.

A digit run inside a string (``"id": "12345678901234567890"``) takes the exact parser too:
same value, only slower.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

# Digits become "0", so that a run of digits is a run of zeros; "-" stays.
DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_WIDE = b"0" * 20  # above 2**64 - 1 = 18446744073709551615 takes 20 digits
_WIDE_NEGATIVE = b"-" + b"0" * 19  # below -2**63 = -9223372036854775808 takes 19 and a minus

_loads = orjson.loads
_decode_error = orjson.JSONDecodeError


class WideLines(list[bytes]):
    """A list of input lines some of which may hold an integer orjson cannot read
    exactly: parse them with ``loads_exact`` (a plain list's lines need only
    ``orjson.loads``). What ``JsonlReader.iter_line_lists`` yields for such chunks."""

    __slots__ = ()


def has_wide_digits(data: bytes) -> bool:
    """Whether ``data`` holds a run of 20 digits, or a minus and 19 digits: a number
    orjson may not read exactly (or one inside a string, which is harmless).

    >>> has_wide_digits(b'{"id": 9223372036854775807, "n": -922337203685477580}')
    False
    >>> has_wide_digits(b'{"id": 18446744073709551616}')
    True
    >>> has_wide_digits(b'[-9223372036854775809, 9223372036854775809]')
    True
    """
    zeroed = data.translate(DIGITS_TO_ZERO)
    return _WIDE in zeroed or _WIDE_NEGATIVE in zeroed


def wide_lines(chunk: bytes, lines: list[bytes]) -> list[bytes]:
    """``lines`` (split from ``chunk``) as ``WideLines`` when ``chunk`` has a wide digit
    run, else as they are."""
    return WideLines(lines) if has_wide_digits(chunk) else lines


def loads_for(lines: list[bytes]) -> Any:
    """The parser of a list of lines: ``loads_exact`` for ``WideLines``, else ``orjson.loads``."""
    return loads_exact if type(lines) is WideLines else _loads


def loads_exact(line: bytes) -> Any:
    """``orjson.loads(line)``, with integers of any size exact.

    A line without a wide digit run is orjson's. Any other line is parsed by the
    standard library's parser, which keeps integers exact, made to accept what orjson
    accepts: strict UTF-8, no NaN or Infinity, no number that is infinite as a float,
    no lone surrogate. A refused line raises ``orjson.JSONDecodeError``, as orjson does.
    An integer longer than Python converts (``sys.get_int_max_str_digits()``, 4300
    digits by default) makes the line invalid: it is never read as a float.

    >>> loads_exact(b'{"id": 12345678901234567890123, "n": -98765432109876543210}')
    {'id': 12345678901234567890123, 'n': -98765432109876543210}
    >>> loads_exact(b'[1e400, 12345678901234567890]')
    Traceback (most recent call last):
    ...
    orjson.JSONDecodeError: number is infinity when parsed as double: line 1 column 2 (char 1)
    """
    if not has_wide_digits(line):
        return _loads(line)
    try:
        value = _loads(line)
    except _decode_error as exc:
        # Refused: perhaps only for an integer that is infinite as a double.
        exact = _parse(line, exc)
        if b"\\u" in line and _has_lone_surrogate(exact):
            lone = _decode_error("lone surrogate in a string", line.decode(), 0)
            raise _reason(exc) or lone from None
        return exact
    try:
        return _parse(line, None)
    except RecursionError:
        # Nested deeper than the standard library's parser goes (orjson goes to 1024):
        # orjson's value, unless a float in it may be an integer it could not hold.
        if _may_hold_wide_float(value):
            raise _decode_error(
                "nested too deeply to read its integers exactly", line.decode(), 0
            ) from None
        return value


def _reason(refused: orjson.JSONDecodeError) -> orjson.JSONDecodeError | None:
    """orjson's error, the reason a line is not JSON; None when it may be only an integer
    that is infinite as a double (the standard parser tells then)."""
    return None if refused.msg.startswith("number is infinity") else refused


def _parse(line: bytes, refused: orjson.JSONDecodeError | None) -> Any:
    """``line`` by the standard library's parser; ``refused``: orjson's error for it
    (None: orjson read it, and a RecursionError is left to the caller)."""
    try:
        text = line.decode("utf-8")  # strict: no encoded surrogates, as orjson
    except UnicodeDecodeError:
        assert refused is not None  # orjson reads only UTF-8: reason_for() tells why
        raise refused from None
    try:
        return _DECODER.decode(text)
    except RecursionError:
        if refused is None:
            raise
        raise refused from None
    except json.JSONDecodeError as exc:
        error = _decode_error(exc.msg, exc.doc, exc.pos)
    except _Refused as exc:
        error = _decode_error(exc.args[0], text, max(0, text.find(exc.args[1])))
    except ValueError as exc:  # an integer past Python's conversion limit
        error = _decode_error(f"integer too long to read exactly: {exc}", text, 0)
    raise (refused and _reason(refused)) or error from None


class _Refused(ValueError):
    """What orjson refuses and the standard library's parser does not: (reason, the text)."""


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON", name)


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused("number is infinity when parsed as double", text)
    return value


_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant, strict=True)


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string of ``value`` (a key too) holds a surrogate that is not part of a pair."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings: Any = (item,)
        elif isinstance(item, dict):
            strings = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return True
    return False


def _may_hold_wide_float(value: Any) -> bool:
    """Whether ``value`` holds a float with an integer value beyond the 64-bit range: what
    orjson makes of an integer literal it cannot hold."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is float:
            if item.is_integer() and not -(2**63) <= item < 2**64:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
