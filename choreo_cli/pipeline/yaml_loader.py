"""Safe YAML 1.2 loading that keeps the line and column of every value and refuses alias bombs.

Scalars are read with the YAML 1.2 core schema, as editors, yaml-language-server and
check-jsonschema read them: ``yes``/``no``/``on``/``off``, ``1:30`` and ``2024-01-01``
are strings; only ``true``/``false`` (and their ``True``/``TRUE`` spellings) are booleans.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from choreo_cli.errors import ChoreoError

MAX_BYTES = 4 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 200

_CORE = "tag:yaml.org,2002:"
_STR_TAG = _CORE + "str"
_SEQ_TAGS = (None, "!", _CORE + "seq")
_MAP_TAGS = (None, "!", _CORE + "map")
_UNSUPPORTED = "is not supported — choreo reads plain YAML only and never runs tags"

# The YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1023-core-schema): the tag of a
# plain scalar, and the characters such a scalar may start with.
_NULL = re.compile(r"(?:~|null|Null|NULL|)\Z")
_BOOL = re.compile(r"(?:true|True|TRUE|false|False|FALSE)\Z")
_INT = re.compile(r"(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)\Z")
_FLOAT = re.compile(
    r"(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z"
)
_RESOLVERS = (
    (_CORE + "null", _NULL, ["~", "n", "N", ""]),
    (_CORE + "bool", _BOOL, list("tTfF")),
    (_CORE + "int", _INT, list("-+0123456789")),
    (_CORE + "float", _FLOAT, list("-+.0123456789")),
)


def _read_null(text: str) -> None:
    if not _NULL.match(text):
        raise ValueError("not null in YAML 1.2 (write null, ~ or nothing)")


def _read_bool(text: str) -> bool:
    if not _BOOL.match(text):
        raise ValueError("not a boolean in YAML 1.2 (write true or false)")
    return text.lower() == "true"


def _read_int(text: str) -> int:
    if not _INT.match(text):
        raise ValueError("not an integer in YAML 1.2 (decimal, 0o octal or 0x hex digits)")
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text)


def _read_float(text: str) -> float:
    if not _FLOAT.match(text):
        raise ValueError("not a number in YAML 1.2 (e.g. 1.5, 1e3, .inf or .nan)")
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if text.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    return float(text)


# What each tag choreo reads makes of a scalar's text (ValueError: the text does not fit).
_SCALAR_READERS: dict[str, Callable[[str], Any]] = {
    _STR_TAG: str,
    _CORE + "null": _read_null,
    _CORE + "bool": _read_bool,
    _CORE + "int": _read_int,
    _CORE + "float": _read_float,
}

YamlPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    """A 1-based line and column in a YAML file."""

    line: int
    column: int


class Position:
    """Where a value was written, and where each of its keys or items was written."""

    __slots__ = ("children", "mark")

    def __init__(
        self,
        mark: Mark,
        children: dict[str, tuple[Mark, Position]] | list[Position] | None = None,
    ) -> None:
        self.mark = mark
        self.children = children


class YamlLoadError(ChoreoError):
    """The text is not YAML choreo can read; ``mark`` says where it went wrong."""

    def __init__(self, message: str, mark: Mark) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


@dataclass
class YamlDocument:
    """Plain Python data (dicts, lists, scalars) with the position of every value.

    ``issues`` are problems found while reading that did not stop it (an unsupported tag,
    a duplicate key): each makes the document unusable, but the data is complete enough
    to check the rest (a tagged value is read as if it had no tag), so every problem of a
    file can be reported at once.

    >>> doc = load_yaml("steps:\\n  - name: a\\n")
    >>> doc.value_mark(("steps", 0, "name"))
    Mark(line=2, column=11)
    """

    data: Any
    root: Position
    issues: list[tuple[Mark, str]] = field(default_factory=list)

    def _walk(self, path: YamlPath) -> tuple[Position, Mark | None, int]:
        """The deepest known position on ``path``, the mark of its key, and how deep it is."""
        pos, key_mark, depth = self.root, None, 0
        for part in path:
            children = pos.children
            if isinstance(children, dict) and isinstance(part, str) and part in children:
                key_mark, pos = children[part]
            elif isinstance(children, list) and isinstance(part, int) and part < len(children):
                key_mark, pos = None, children[part]
            else:
                break
            depth += 1
        return pos, key_mark, depth

    def value_mark(self, path: YamlPath) -> Mark:
        """Where the value at ``path`` (or its deepest known parent) was written."""
        return self._walk(path)[0].mark

    def key_mark(self, path: YamlPath) -> Mark:
        """Where the last key of ``path`` was written (the value's mark for list items)."""
        pos, key_mark, depth = self._walk(path)
        if depth == len(path) and key_mark is not None:
            return key_mark
        return pos.mark


def read_yaml_file(path: str | Path, *, max_bytes: int = MAX_BYTES) -> YamlDocument:
    """Read and load a YAML file; raises OSError or YamlLoadError.

    >>> read_yaml_file("pipeline.yaml").data["version"]  # doctest: +SKIP
    1
    """
    with open(path, "rb") as stream:
        raw = stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise YamlLoadError(
            f"file is larger than {max_bytes // (1024 * 1024)} MiB — refused; "
            "a pipeline file should be small",
            Mark(1, 1),
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlLoadError(
            f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x}) — save it as UTF-8",
            Mark(line, column),
        ) from None
    return load_yaml(text)


def load_yaml(text: str, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> YamlDocument:
    """Load one YAML 1.2 document safely (no tags executed), keeping positions.

    Scalars follow the YAML 1.2 core schema (``no`` is a string, ``0x1f`` is 31). Mapping
    keys are always strings, as in JSON (``on:`` is the key 'on', not true). Aliases count
    with their full expanded size, so a document that would expand past ``max_nodes``
    values is refused before it is expanded. What stops the reading raises YamlLoadError;
    other problems are in the document's ``issues``.
    """
    import yaml

    loader = _loader_class()(text)
    try:
        return _Builder(loader, max_nodes=max_nodes, max_depth=max_depth).build_document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(mark.line + 1, mark.column + 1) if mark is not None else Mark(1, 1)
        message = exc.problem or "invalid YAML"
        if exc.context:
            message = f"{exc.context}: {message}"
        raise YamlLoadError(f"YAML syntax error: {message}", where) from None
    except yaml.YAMLError as exc:
        raise YamlLoadError(f"YAML syntax error: {exc}", Mark(1, 1)) from None
    finally:
        loader.dispose()


@lru_cache(maxsize=1)
def _loader_class() -> Any:
    """pyyaml's safe loader (the C one when built) resolving plain scalars as YAML 1.2 does."""
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class CoreSchemaLoader(base):  # type: ignore[misc,valid-type]
        """The safe loader with the YAML 1.2 core schema's implicit tags, and only those."""

        # Its own table: add_implicit_resolver would otherwise start from YAML 1.1's.
        yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}  # noqa: RUF012

    for tag, pattern, first in _RESOLVERS:
        CoreSchemaLoader.add_implicit_resolver(tag, pattern, first)
    return CoreSchemaLoader


def scalar_value(text: str) -> Any:
    """What ``text`` means as a plain YAML 1.2 scalar: the same rules as in pipeline files.

    >>> [scalar_value(t) for t in ("3", "0x1f", "1:30", "no", "true", "~", "2024-01-01")]
    [3, 31, '1:30', 'no', True, None, '2024-01-01']
    """
    import yaml

    loader = _loader_class()("")
    try:
        tag = loader.resolve(yaml.ScalarNode, text, (True, False))
    finally:
        loader.dispose()
    try:
        return _SCALAR_READERS.get(tag, str)(text)
    except ValueError:  # an integer too long for int(): kept as written
        return text


class _Builder:
    """Builds values straight from parser events, counting what aliases expand to."""

    def __init__(self, loader: Any, *, max_nodes: int, max_depth: int) -> None:
        import yaml

        self.yaml = yaml
        self.loader = loader
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.count = 0
        self.via_alias = False
        self.anchors: dict[str, tuple[Any, Position, int]] = {}
        self.issues: list[tuple[Mark, str]] = []

    def build_document(self) -> YamlDocument:
        yaml = self.yaml
        event = self.loader.get_event()  # StreamStart
        event = self.loader.get_event()
        if isinstance(event, yaml.StreamEndEvent):
            return YamlDocument(None, Position(Mark(1, 1)), self.issues)
        data, pos = self._build(self.loader.get_event(), 0)
        self.loader.get_event()  # DocumentEnd
        event = self.loader.get_event()
        if not isinstance(event, yaml.StreamEndEvent):
            # The first document is still checked; the rest is not read.
            self.issues.append(
                (
                    _mark(event.start_mark),
                    "a pipeline file holds one YAML document; a second one starts here — "
                    "remove it or put it in its own file",
                )
            )
        return YamlDocument(data, pos, self.issues)

    def _add(self, size: int, mark: Mark) -> None:
        self.count += size
        if self.count > self.max_nodes:
            what = "aliases expand" if self.via_alias else "the document holds"
            raise YamlLoadError(
                f"{what} to more than {self.max_nodes} values — refused "
                "(an alias bomb, or far too much data for a pipeline file)",
                mark,
            )

    def _build(self, event: Any, depth: int) -> tuple[Any, Position]:
        yaml = self.yaml
        mark = _mark(event.start_mark)
        if depth > self.max_depth:
            raise YamlLoadError(
                f"values are nested more than {self.max_depth} deep — refused", mark
            )
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in self.anchors:
                self.issues.append(
                    (mark, f"alias '*{event.anchor}' has no anchor '&{event.anchor}' before it")
                )
                self._add(1, mark)
                return None, Position(mark)
            value, pos, size = self.anchors[event.anchor]
            self.via_alias = True
            self._add(size, mark)
            return value, pos
        start = self.count
        if isinstance(event, yaml.ScalarEvent):
            self._add(1, mark)
            value, pos = self._scalar(event, mark), Position(mark)
        elif isinstance(event, yaml.SequenceStartEvent):
            self._check_tag(event.tag, _SEQ_TAGS, "sequence", mark)
            self._add(1, mark)
            value, pos = self._sequence(depth, mark)
        elif isinstance(event, yaml.MappingStartEvent):
            self._check_tag(event.tag, _MAP_TAGS, "mapping", mark)
            self._add(1, mark)
            value, pos = self._mapping(depth, mark)
        else:  # pragma: no cover - the parser only emits the events above here
            raise YamlLoadError(f"unexpected YAML event {type(event).__name__}", mark)
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, pos, self.count - start)
        return value, pos

    def _scalar(self, event: Any, mark: Mark) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            return self._plain(event.value, event.implicit, mark)
        read = _SCALAR_READERS.get(tag)
        if read is None:
            self.issues.append((mark, f"tag '{_short(tag)}' {_UNSUPPORTED}"))
            # Checked on as the value written without the tag.
            return self._plain(event.value, (event.style in (None, ""), False), mark)
        try:
            return read(event.value)
        except ValueError as exc:
            self.issues.append(
                (
                    mark,
                    f"cannot read {_shown(event.value)} as '{_short(tag)}': {exc} — "
                    "fix the value or remove the tag",
                )
            )
            return event.value

    def _plain(self, text: str, implicit: tuple[bool, bool], mark: Mark) -> Any:
        """A scalar without a tag, resolved by the YAML 1.2 core schema."""
        tag = self.loader.resolve(self.yaml.ScalarNode, text, implicit)
        try:
            return _SCALAR_READERS.get(tag, str)(text)
        except ValueError as exc:  # an integer past int()'s digit limit
            self.issues.append((mark, f"cannot read {_shown(text)}: {exc} — quote it"))
            return text

    def _check_tag(
        self, tag: str | None, allowed: tuple[str | None, ...], kind: str, mark: Mark
    ) -> None:
        if tag not in allowed:
            # Checked on as a plain sequence or mapping.
            self.issues.append((mark, f"tag '{_short(tag)}' on a {kind} {_UNSUPPORTED}"))

    def _sequence(self, depth: int, mark: Mark) -> tuple[list[Any], Position]:
        items: list[Any] = []
        positions: list[Position] = []
        end = self.yaml.SequenceEndEvent
        while not isinstance(event := self.loader.get_event(), end):
            value, pos = self._build(event, depth + 1)
            items.append(value)
            positions.append(pos)
        return items, Position(mark, positions)

    def _mapping(self, depth: int, mark: Mark) -> tuple[dict[str, Any], Position]:
        yaml = self.yaml
        data: dict[str, Any] = {}
        children: dict[str, tuple[Mark, Position]] = {}
        merged: list[tuple[dict[str, Any], dict[str, tuple[Mark, Position]]]] = []
        while not isinstance(event := self.loader.get_event(), yaml.MappingEndEvent):
            key_mark = _mark(event.start_mark)
            if not isinstance(event, yaml.ScalarEvent):
                self.issues.append((key_mark, "mapping keys must be plain strings"))
                self._build(event, depth + 1)  # the key, then its value: both left out
                self._build(self.loader.get_event(), depth + 1)
                continue
            if event.tag not in (None, "!") and event.tag not in _SCALAR_READERS:
                self.issues.append((key_mark, f"tag '{_short(event.tag)}' {_UNSUPPORTED}"))
            key = event.value
            is_merge = event.tag is None and event.style in (None, "") and key == "<<"
            value, pos = self._build(self.loader.get_event(), depth + 1)
            if is_merge:
                merged.extend(self._merge_sources(value, pos, key_mark))
                continue
            if key in children:
                first = children[key][0]
                self.issues.append(
                    (
                        key_mark,
                        f"duplicate key '{key}' (first at line {first.line}) — "
                        "write each key once in a mapping",
                    )
                )
            data[key] = value
            children[key] = (key_mark, pos)
        # Explicit keys win over merged ones; earlier merge sources win over later ones.
        for source, source_children in merged:
            for key, value in source.items():
                if key not in data:
                    data[key] = value
                    children[key] = source_children[key]
        return data, Position(mark, children)

    def _merge_sources(
        self, value: Any, pos: Position, mark: Mark
    ) -> list[tuple[dict[str, Any], dict[str, tuple[Mark, Position]]]]:
        if isinstance(value, dict) and isinstance(pos.children, dict):
            return [(value, pos.children)]
        if isinstance(value, list) and isinstance(pos.children, list):
            sources = []
            for item, item_pos in zip(value, pos.children, strict=True):
                if not (isinstance(item, dict) and isinstance(item_pos.children, dict)):
                    break
                sources.append((item, item_pos.children))
            else:
                return sources
        self.issues.append(
            (mark, "a merge key '<<' needs a mapping or a list of mappings (e.g. '<<: *defaults')")
        )
        return []


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut short when long."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _short(tag: str | None) -> str:
    return str(tag).replace("tag:yaml.org,2002:", "!!")


def _mark(mark: Any) -> Mark:
    return Mark(mark.line + 1, mark.column + 1)
