"""``choreo test --update``: a test file's text with new ``expect:``/``exit_code:`` values.

Only the updated tests' ``expect:`` (and ``exit_code:``) change; every other character of
the file stays as it was (comments, key order, quoting, flow or block style, line
endings). ruamel.yaml's parser gives the position of every node; the new values are
dumped with ruamel.yaml and spliced into the original text at those positions, because
ruamel's own round trip re-flows some untouched text (sequence indentation, long lines).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from typing import Any, Literal

_LINE_BREAKS = "\r\n"
# Characters a string cannot hold literally on one line of YAML; such a string is written
# double-quoted, where they become escapes, so every dumped scalar fits on one line.
_BREAKING = frozenset("\r\n\x85\u2028\u2029")
# The indentation of the block written for a test whose value sat on its key's line.
_STEP = 2


@dataclass(frozen=True)
class TestUpdate:
    """What a test's expectations become: one ``expect`` entry per record, and the exit
    code (None leaves ``exit_code:`` as it is, or absent).

    >>> TestUpdate(expect=[{"status": "succeeded"}], exit_code=0).exit_code
    0
    """

    __test__ = False  # a value object, not a pytest test class

    expect: list[dict[str, Any]]
    exit_code: int | None


def update_expectations(text: str, updates: Mapping[int, TestUpdate]) -> str:
    """``text`` (a test file) with the ``expect:`` of the tests at the indices of
    ``updates`` (positions in ``tests:``) replaced, and their ``exit_code:`` replaced or,
    when absent, added right after ``expect:``. Every other character is kept.

    Raises ValueError when the text has no ``tests:`` list holding a mapping at each
    index, or when a value to replace defines an anchor that an alias elsewhere uses.

    >>> text = "tests:\\n  - name: one  # the first\\n    input: [1]\\n"
    >>> print(update_expectations(text, {0: TestUpdate([{"status": "failed"}], 1)}), end="")
    tests:
      - name: one  # the first
        input: [1]
        expect:
          - status: failed
        exit_code: 1
    """
    if not updates:
        return text
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        root = _build_tree(YAML(typ="rt").parse(text), text)
    except YAMLError as exc:
        raise ValueError(f"the test file is not valid YAML: {exc}") from None
    tests = _value_of(root, "tests") if root is not None else None
    if tests is None or tests.kind != "sequence":
        raise ValueError("the test file has no 'tests:' list")
    splicer = _Splicer(text, root)
    edits: list[_Edit] = []
    for index in sorted(updates):
        if not 0 <= index < len(tests.children):
            raise ValueError(f"there is no test #{index} in 'tests:'")
        test = tests.children[index]
        if test.kind != "mapping":
            raise ValueError(f"test #{index} in 'tests:' is not a mapping")
        edits.extend(splicer.edits_for(test, updates[index], index=index))
    return _apply(text, edits)


NodeKind = Literal["scalar", "alias", "mapping", "sequence"]


@dataclass
class _Node:
    """A node of the parsed document with its position in the text: ``start`` and
    ``end`` (just past its last character, trailing line breaks of a block scalar left
    out); a mapping's ``children`` are its keys and values in turn."""

    kind: NodeKind
    start: int
    end: int
    column: int
    flow: bool = False
    value: str | None = None
    anchor: str | None = None
    empty: bool = False  # a value left out (`key:` and nothing): null at no position
    children: list[_Node] = field(default_factory=list)

    def descendants(self) -> list[_Node]:
        found = [self]
        for child in self.children:
            found.extend(child.descendants())
        return found


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    text: str


def _build_tree(events: Any, text: str) -> _Node | None:
    """The first document's root node from ruamel's parser events (aliases are leaves, so
    each node's position is where it is written)."""
    from ruamel.yaml.events import (
        AliasEvent,
        CollectionEndEvent,
        DocumentEndEvent,
        MappingStartEvent,
        ScalarEvent,
        SequenceStartEvent,
    )

    stack: list[_Node] = []
    root: _Node | None = None
    for event in events:
        start = event.start_mark
        if isinstance(event, (MappingStartEvent, SequenceStartEvent)):
            kind: NodeKind = "mapping" if isinstance(event, MappingStartEvent) else "sequence"
            flow = bool(event.flow_style)
            stack.append(_Node(kind, start.index, start.index, start.column, flow=flow))
            stack[-1].anchor = event.anchor
            continue
        if isinstance(event, DocumentEndEvent):
            break
        if isinstance(event, ScalarEvent):
            end = event.end_mark.index
            if event.style in ("|", ">"):
                while end > start.index and text[end - 1] in " \t\r\n":
                    end -= 1
            node = _Node("scalar", start.index, end, start.column, value=event.value)
            node.anchor = event.anchor
            node.empty = (
                event.value == "" and event.style is None and not (event.tag or event.anchor)
            )
        elif isinstance(event, AliasEvent):
            node = _Node("alias", start.index, event.end_mark.index, start.column)
            node.value = event.anchor
        elif isinstance(event, CollectionEndEvent):
            node = stack.pop()
            if node.flow:
                node.end = event.end_mark.index
            elif node.children:
                node.end = node.children[-1].end
        else:
            continue
        if stack:
            _attach(stack[-1], node, text)
        else:
            root = node
    return root


def _attach(parent: _Node, node: _Node, text: str) -> None:
    if node.empty:
        # The parser marks a left-out value wherever it stood (often the next line): put
        # it just past its ':' (or '-'), where it is written.
        siblings = parent.children
        before = siblings[-1].end if siblings else parent.start
        at = None
        if parent.kind == "mapping" and len(siblings) % 2:
            at = _indicator_end(text, before, ":")
        elif parent.kind == "sequence" and not parent.flow:
            at = _indicator_end(text, before, "-")
        node.start = node.end = before if at is None else at
    parent.children.append(node)


def _indicator_end(text: str, at: int, indicator: str) -> int | None:
    """Just past the first ``indicator`` from ``at`` on, spaces, line breaks and comments
    skipped; None when something else comes first (``{key}`` has no ':')."""
    while at < len(text):
        char = text[at]
        if char == indicator:
            return at + 1
        if char == "#":
            at = _line_end(text, at)
        elif char in " \t\r\n":
            at += 1
        else:
            break
    return None


def _line_end(text: str, at: int) -> int:
    """Where the line holding ``at`` ends (its line break, or the end of the text)."""
    ends = [i for i in (text.find(c, at) for c in _LINE_BREAKS) if i >= 0]
    return min(ends, default=len(text))


def _value_of(mapping: _Node, key: str) -> _Node | None:
    entry = _entry(mapping, key)
    return entry[1] if entry is not None else None


def _entry(mapping: _Node, key: str) -> tuple[_Node, _Node] | None:
    """The key and value nodes of ``key`` (the last one, as loading keeps the last)."""
    if mapping.kind != "mapping":
        return None
    found = None
    pairs = mapping.children
    for k, v in zip(pairs[::2], pairs[1::2], strict=True):
        if k.kind == "scalar" and k.value == key:
            found = (k, v)
    return found


class _Splicer:
    """Builds the edits for one file: knows its text, its line ending, and its aliases."""

    def __init__(self, text: str, root: _Node | None) -> None:
        self.text = text
        self.newline = "\r\n" if "\r\n" in text else "\r" if "\r" in text else "\n"
        nodes = root.descendants() if root is not None else []
        self.aliases = [(n.start, n.value) for n in nodes if n.kind == "alias"]

    def edits_for(self, test: _Node, update: TestUpdate, *, index: int) -> list[_Edit]:
        expect = _entry(test, "expect")
        exit_entry = _entry(test, "exit_code")
        add_exit = update.exit_code is not None and exit_entry is None
        edits: list[_Edit] = []
        if expect is not None:
            self._check_no_alias_uses(expect[1], what="expect", index=index)
            edits.append(self._replace_expect(test, *expect, update, add_exit=add_exit))
        else:
            edits.append(self._add_expect(test, update, add_exit=add_exit))
        if update.exit_code is not None and exit_entry is not None:
            key, value = exit_entry
            self._check_no_alias_uses(value, what="exit_code", index=index)
            edits.append(self._replace_value(key, value, str(update.exit_code)))
        return edits

    # -- expect: present --------------------------------------------------------------

    def _replace_expect(
        self, test: _Node, key: _Node, value: _Node, update: TestUpdate, *, add_exit: bool
    ) -> _Edit:
        colon = self._colon_end(key)
        # A flow list the user wrote stays one (`expect: []`, a placeholder, does not).
        old_flow = value.kind in ("mapping", "sequence") and value.flow and bool(value.children)
        if test.flow or old_flow or not update.expect:
            edit = self._replace_value(key, value, _dump_flow(update.expect))
        elif not value.empty and self._line_break_between(colon, value.start):
            # A block value on the lines below its key: the new one starts where it did.
            lines = _dump_block(update.expect)
            edit = _Edit(value.start, value.end, self._indent(lines, value.column, first=False))
        else:
            # A value on the key's line (null, a scalar, an alias): the block goes below,
            # and whatever followed the old value on that line (a comment) stays there.
            after = value.end
            line_end = self._line_end(after)
            lines = _dump_block(update.expect)
            block = self._indent(lines, self._key_column(test) + _STEP, first=True)
            edit = _Edit(colon, line_end, self.text[after:line_end] + self.newline + block)
        if add_exit:
            edit = self._with_exit_code(test, edit, update)
        return edit

    def _replace_value(self, key: _Node, value: _Node, new: str) -> _Edit:
        if value.empty:
            return _Edit(value.end, value.end, " " + new)
        if value.kind in ("mapping", "sequence") and not value.flow:
            # A block collection below its key becomes a one-line value on the key's line.
            return _Edit(self._colon_end(key), value.end, " " + new)
        return _Edit(value.start, value.end, new)

    def _with_exit_code(self, test: _Node, edit: _Edit, update: TestUpdate) -> _Edit:
        entry = f"exit_code: {update.exit_code}"
        if test.flow:
            return _Edit(edit.start, edit.end, f"{edit.text}, {entry}")
        line_end = self._line_end(edit.end)
        column = self._key_column(test)
        tail = self.text[edit.end : line_end]
        return _Edit(edit.start, line_end, edit.text + tail + self.newline + " " * column + entry)

    # -- expect: absent ---------------------------------------------------------------

    def _add_expect(self, test: _Node, update: TestUpdate, *, add_exit: bool) -> _Edit:
        anchor = _entry(test, "input") or _entry(test, "input_lines")
        pairs = test.children
        if anchor is None and pairs:
            anchor = (pairs[-2], pairs[-1])
        exit_text = f"exit_code: {update.exit_code}" if add_exit else ""
        if test.flow:
            entries = [f"expect: {_dump_flow(update.expect)}"] + ([exit_text] if add_exit else [])
            if anchor is None:
                return _Edit(test.start + 1, test.start + 1, ", ".join(entries))
            at = self._entry_end(anchor)
            return _Edit(at, at, "".join(", " + e for e in entries))
        assert anchor is not None  # a block mapping has at least one entry
        column = self._key_column(test)
        at = self._line_end(self._entry_end(anchor))
        pad = self.newline + " " * column
        if update.expect:
            block = self._indent(_dump_block(update.expect), column + _STEP, first=True)
            text = f"{pad}expect:{self.newline}{block}"
        else:
            text = f"{pad}expect: []"
        if add_exit:
            text += pad + exit_text
        return _Edit(at, at, text)

    # -- positions --------------------------------------------------------------------

    def _colon_end(self, key: _Node) -> int:
        """Just past the ':' after ``key`` (only asked of block mappings, where it is)."""
        at = _indicator_end(self.text, key.end, ":")
        return key.end if at is None else at

    @staticmethod
    def _entry_end(entry: tuple[_Node, _Node]) -> int:
        return entry[1].end

    def _line_end(self, at: int) -> int:
        return _line_end(self.text, at)

    def _line_break_between(self, start: int, end: int) -> bool:
        return any(c in _LINE_BREAKS for c in self.text[start:end])

    @staticmethod
    def _key_column(test: _Node) -> int:
        return test.children[0].column

    def _indent(self, lines: Sequence[str], column: int, *, first: bool) -> str:
        """``lines`` joined by the file's line ending, each indented by ``column`` spaces
        (the first too when ``first``); empty lines get no trailing spaces."""
        pad = " " * column
        out = [(pad + line if first else line) if line else "" for line in lines[:1]]
        out += [pad + line if line else "" for line in lines[1:]]
        return self.newline.join(out)

    def _check_no_alias_uses(self, node: _Node, *, what: str, index: int) -> None:
        anchors = {n.anchor for n in node.descendants() if n.anchor}
        used = sorted({name for at, name in self.aliases if at >= node.end and name in anchors})
        if used:
            raise ValueError(
                f"test #{index}: its {what}: defines the anchor &{used[0]}, which an alias"
                f" uses further down; rewrite that by hand"
            )


def _apply(text: str, edits: list[_Edit]) -> str:
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    for before, after in pairwise(ordered):
        if after.start < before.end:
            raise ValueError("two updates overlap in the test file")
    pieces = []
    at = 0
    for edit in ordered:
        pieces.append(text[at : edit.start])
        pieces.append(edit.text)
        at = edit.end
    pieces.append(text[at:])
    return "".join(pieces)


@lru_cache(maxsize=1)
def _representer() -> type:
    from ruamel.yaml.representer import RoundTripRepresenter

    class _Representer(RoundTripRepresenter):
        """Insertion order kept (as the result line has it); ``null`` spelled out; a
        string with a line break double-quoted (escaped, so it stays on one line), and
        ``<<`` too (plain, it is a merge key)."""

    def represent_none(representer: Any, _data: None) -> Any:
        return representer.represent_scalar("tag:yaml.org,2002:null", "null")

    def represent_str(representer: Any, data: str) -> Any:
        # "<<" plain would be read as a merge key.
        style = '"' if _BREAKING.intersection(data) or data == "<<" else None
        return representer.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    _Representer.add_representer(type(None), represent_none)
    _Representer.add_representer(str, represent_str)
    return _Representer


def _dumper(*, flow: bool) -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.Representer = _representer()
    yaml.default_flow_style = flow
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 1 << 30  # never fold a long line: the new text must sit where it is put
    yaml.allow_unicode = True
    yaml.brace_single_entry_mapping_in_flow_sequence = True
    return yaml


def _dump(value: list[dict[str, Any]], *, flow: bool) -> str:
    stream = io.StringIO()
    _dumper(flow=flow).dump(value, stream)
    return stream.getvalue()


def _dump_flow(value: list[dict[str, Any]]) -> str:
    """``value`` as one line of flow YAML: ``[{status: succeeded}]``."""
    return _dump(value, flow=True).rstrip("\n")


def _dump_block(value: list[dict[str, Any]]) -> list[str]:
    """``value`` (a non-empty list) as block YAML lines, the dashes at column 0."""
    lines = _dump(value, flow=False).rstrip("\n").split("\n")
    # The sequence at the top is dumped two columns in (offset=2): take them back.
    return [line[2:] if line.startswith("  ") else line for line in lines]
