"""Text for people and JSON for programs, safe whatever a file, a record or an exception holds.

``printable`` is applied where choreo's text meets the terminal (the console's messages,
the summary and ``show`` tables, log lines, the text and github reports of ``validate``):
a pipeline file, a record or an exception message cannot move the cursor, erase a line,
change colours or start a fake line, and one problem stays one line. ``json_text`` is
for JSON outputs: JSON escapes control characters itself, but an undecodable byte of a
file name (a lone surrogate in Python's text) would make it invalid UTF-8.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

# C0 controls (\n and \t included), DEL, C1 controls; the Unicode line and paragraph
# separators (a new line to some terminals and editors); the bidirectional embeddings,
# overrides and isolates, which can show text in another order than it is ("Trojan
# Source"); lone surrogates, which stand for the undecodable bytes of a file name.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_BUT_NEWLINE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        # os.fsdecode's stand-in for an undecodable byte: show the byte, as
        # os.fsencode(name).decode("utf-8", "backslashreplace") would.
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def printable(text: str, *, multiline: bool = False) -> str:
    r"""``text`` with every control character shown as an escape (``\r``, ``\x1b``, ``\x9b``).

    What is escaped: C0 controls (``\n`` and ``\t`` too), DEL, C1 controls, U+2028 and
    U+2029, the bidirectional overrides and isolates, and lone surrogates (an
    undecodable byte of a file name is shown as that byte, ``\xff``). Backslashes are
    left alone: the text is for people, not meant to be read back. ``multiline=True``
    keeps ``\n`` (a traceback's lines, a description written over several lines).

    >>> printable("x\r\x1b[2Kok: 1 file valid\x9b")
    'x\\r\\x1b[2Kok: 1 file valid\\x9b'
    >>> printable("bad\udcff.yaml"), printable("a\nb"), printable("a\nb", multiline=True)
    ('bad\\xff.yaml', 'a\\nb', 'a\nb')
    """
    pattern = _UNSAFE_BUT_NEWLINE if multiline else _UNSAFE
    if pattern.search(text) is None:
        return text  # the usual case, and the cheapest
    return pattern.sub(_escape, text)


def json_text(
    value: Any, *, indent: int | None = None, default: Callable[[Any], Any] | None = None
) -> str:
    r"""``value`` as JSON text that is valid UTF-8 whatever its strings hold.

    Non-ASCII characters are written as they are; a lone surrogate (an undecodable byte
    of a file name) becomes the text ``\xff``, as ``printable`` shows it.

    >>> json_text({"file": "bad\udcff.yaml", "name": "é\x1b"})
    '{"file": "bad\\\\xff.yaml", "name": "é\\u001b"}'
    """
    text = json.dumps(value, ensure_ascii=False, indent=indent, default=default)
    if _SURROGATE.search(text) is None:
        return text
    # Surrogates can only be inside string literals, where a backslash is written "\\".
    return _SURROGATE.sub(lambda match: "\\" + _escape(match), text)


def github_command(
    severity: str, message: str, *, file: str, line: int, column: int, title: str
) -> str:
    """One GitHub Actions workflow command (an annotation), with its line ending.

    GitHub's own escapes for ``%``, CR and LF (an annotation may have several lines), and
    ``:`` and ``,`` in the properties; any other control character is shown as an escape,
    as in the text reports.

    >>> github_command("error", "bad\\nvalue", file="a,b.yaml", line=3, column=1, title="x: y")
    '::error file=a%2Cb.yaml,line=3,col=1,title=x%3A y::bad%0Avalue\\n'
    """
    properties = ",".join(
        [
            f"file={_github_property(file)}",
            f"line={line}",
            f"col={column}",
            f"title={_github_property(title)}",
        ]
    )
    return f"::{severity} {properties}::{_github_data(message)}\n"


def _github_data(text: str) -> str:
    return printable(text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))


def _github_property(text: str) -> str:
    return _github_data(text).replace(":", "%3A").replace(",", "%2C")
