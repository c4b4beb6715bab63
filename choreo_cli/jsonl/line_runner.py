"""`choreo run`'s serial loop: a compiled record runner fused with JSON parsing and writing.

``run_lines(coordinator, batches, ...)`` runs JSON Lines given as lists of lines, one
record at a time, and never builds the Result of a record that ran every step without an
error: its line is written from a template. The record code is the compiled runners'
(``choreo_cli.core.compiled``); this module adds the parsing of each line and the
templates of the lines it writes. With ``CHOREO_RUNNER=interpreted`` the same loop is
run as plain Python over the reference runner (``interpret_line_runner``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from choreo_cli.core.compiled import Generated, define, record_body, reference_selected, spell
from choreo_cli.core.items import InvalidLine
from choreo_cli.jsonl.lines import SkipLines
from choreo_cli.jsonl.numbers import WideLines, loads_exact, loads_for
from choreo_cli.jsonl.reader import reason_for

if TYPE_CHECKING:
    from choreo_cli.core.coordinator import Coordinator
    from choreo_cli.core.plan import Plan
    from choreo_cli.core.result import Result
    from choreo_cli.core.workers import Worker

LineRunner = Callable[
    [
        Iterable[list[bytes]],
        Any,
        bytes,
        Callable[[bytes], None],
        Callable[[Any], Any],
        "Callable[[Any], Any] | None",
    ],
    Iterator[int],
]


def run_lines(
    coordinator: Coordinator,
    batches: Iterable[list[bytes]],
    *,
    clean_line: bytes,
    put: Callable[[bytes], Any],
    emit: Callable[[Result], Any],
    keep_raw: bool = False,
    tally: Callable[[Result], Any] | None = None,
) -> Iterator[int]:
    """Run JSON Lines given as lists of lines (``JsonlReader.iter_line_lists``), one
    record at a time on the coordinator's own worker: the fast loop of `choreo run`,
    which never builds the Result of a record that succeeded without any error.

    Such a record's line is ``clean_line % (index, line)`` (the bytes of a clean
    result line with two ``%d``), handed to ``put``. Every other record's Result goes
    to ``emit``; a true return stops the run there. Yields, after each list, how many
    clean records it held. ``keep_raw`` sets each emitted Result's ``raw``. Needs
    ``workers == 1``. With ``tally``, a record that succeeded with skipped jobs (a
    re-run's common record) is written as its line, handed to ``put``, once a record
    of the same pattern (the same jobs skipped, by the same exception types) went to
    ``emit``: ``tally`` gets that first Result, which stands for its outcome in counts.
    Iterating the generator is one run of the coordinator: an interruption ends with it
    (see ``Coordinator.interrupt``).

    >>> from choreo_cli import Coordinator, Step
    >>> coordinator = Coordinator()
    >>> coordinator.add_step(Step(name="double", job=lambda ctx, record: record * 2))
    >>> out = []
    >>> list(run_lines(coordinator, [[b"1", b"x"]], clean_line=b"%d:%d ", put=out.append,
    ...                emit=lambda result: out.append(result.status)))
    [1]
    >>> out
    [b'0:1 ', 'invalid']
    """
    if coordinator.workers != 1:
        raise ValueError("run_lines runs one record at a time: it needs workers == 1")
    runner: LineRunner = coordinator.compiled(
        ("run_lines", keep_raw), lambda plan: build_line_runner(plan, keep_raw=keep_raw)
    )
    return runner(batches, coordinator.local_worker(), clean_line, put, emit, tally)


def build_line_runner(plan: Plan, *, keep_raw: bool) -> LineRunner:
    """The compiled line runner, or the interpreted one when ``CHOREO_RUNNER=interpreted``
    (see ``choreo_cli.core.interpreted``)."""
    if reference_selected():
        return interpret_line_runner(plan, keep_raw=keep_raw)
    return compile_line_runner(plan, keep_raw=keep_raw)


def compile_line_runner(plan: Plan, *, keep_raw: bool) -> LineRunner:
    """``run_lines`` of ``line_source``, defined."""
    runner: LineRunner = define(line_source(plan, keep_raw=keep_raw), plan)[0]
    return runner


def interpret_line_runner(plan: Plan, *, keep_raw: bool) -> LineRunner:
    """``run_lines`` as a plain loop: each line parsed as the compiled loop parses it, each
    record run by the reference runner (``choreo_cli.core.interpreted``), the line of a
    clean Result written from ``clean_line``, every other Result emitted.

    The reference for ``line_source``'s loop: the same lines, counts and stops. ``tally``
    is not used: a record the compiled loop writes from a skip template is emitted here,
    which writes the same line and counts the same.
    """
    from choreo_cli.core import interpreted

    run, _ = interpreted.build_runner(plan)
    flags = plan.flags
    invalid = plan.outcomes.invalid

    def run_lines(
        batches: Iterable[list[bytes]],
        worker: Worker,
        clean_line: bytes,
        put: Callable[[bytes], Any],
        emit: Callable[[Result], Any],
        tally: Callable[[Result], Any] | None,
    ) -> Iterator[int]:
        flags.begin()  # one run of the coordinator, until the generator ends
        try:
            if flags.interrupted:
                return
            number = 0  # lines before this list (blank ones too)
            index = -1  # the last record's number (every non-blank line counts)
            for lines in batches:
                clean = 0
                loads = loads_for(lines)  # exact for integers past 64 bits
                for line, data in enumerate(lines, number + 1):
                    raw = data + b"\n" if keep_raw else None
                    try:
                        value = loads(data)
                    except orjson.JSONDecodeError as exc:
                        if not data.strip():
                            continue
                        index += 1
                        item = InvalidLine(line, reason_for(data, exc), raw, index)
                        result = invalid(item, index)
                    else:
                        index += 1
                        result = run(value, index, line, raw, worker)
                        if result.clean:
                            put(clean_line % (index, line))
                            clean += 1
                            if flags.interrupted:
                                yield clean
                                return
                            continue
                    if emit(result) or flags.interrupted:
                        yield clean
                        return
                number += len(lines)
                yield clean
        finally:
            flags.end()

    return run_lines


def line_source(plan: Plan, *, keep_raw: bool) -> Generated:
    """The source of ``run_lines(batches, worker, clean_line, put, emit, tally)``:
    the serial loop of `choreo run`, fused with JSON parsing and the writing of lines.

    ``batches`` yields lists of input lines (bytes, without their ``\n``), as
    ``JsonlReader.iter_line_lists`` does; a list that may hold an integer past 64 bits is
    a ``WideLines``, whose lines are parsed exactly (``loads_exact``), the others by
    orjson alone. Each record that ran every step without an error
    costs no Record and no Result: ``put(clean_line % (index, line))`` writes its line.
    With ``tally``, a record that succeeded with skipped jobs (a re-run's common record)
    costs no Result either once its pattern is known: its line from the pattern's
    template goes to ``put``, and ``tally`` gets the pattern's Result (for the counts).
    Every other record (invalid, failed, cancelled, the first of a skip pattern) is built
    by the plan's rare paths and handed to ``emit(result)``; a true return stops
    reading. The generator yields, after each batch, how many clean records it held; it
    stops after the first record ended by an interruption. Its iteration is one run of
    the coordinator: an interruption ends with it (``Coordinator.interrupt``).
    """
    skip_lines = SkipLines()
    extra: dict[str, Any] = {
        "orjson_loads": orjson.loads,
        "loads_exact": loads_exact,
        "WideLines": WideLines,
        "decode_error": orjson.JSONDecodeError,
        "reason": reason_for,
        "skip_line": skip_lines.line,
        "learn_skips": skip_lines.learn,
    }
    clean_exit = [
        "put(clean_line % (index, line))",
        "clean += 1",
        "if flags.interrupted:",
        "    yield clean",
        "    return",
        "continue",
    ]
    # A succeeded record whose prechecks skipped jobs (with Skip), of a known pattern: its
    # line from a template (its bag is reused, as a clean record's). The first of a
    # pattern teaches it. ``pattern`` is the record's SkipPattern (record_body sets bit i
    # when the precheck of step i raised Skip), or -1 when another exception skipped a job.
    # A job with retry: puts ``attempts`` in the line, which no template has (today its
    # pattern never gets one, since every such line has attempts: this keeps it so).
    retries = " and ctx._attempts is None" if plan.has_retry else ""
    skip_exit = [
        f"if tally is not None and pattern > 0{retries}:",
        "    written = skip_line(pattern, index, line, errors)",
        "    if written is not None:",
        "        put(written[0])",
        "        tally(written[1])",
        "        if flags.interrupted:",
        "            yield clean",
        "            return",
        "        continue",
        f"    result = finish(ctx, raw, started, errors, skipped, {len(plan.steps)})",
        "    learn_skips(pattern, result)",
        "    EXIT result",
    ]
    body, namespace = record_body(
        plan,
        clean_exit=clean_exit,
        reuse_bag=True,
        skip_exit=skip_exit,
    )
    raw = "data + NEWLINE" if keep_raw else "None"
    namespace["NEWLINE"] = b"\n"
    # The generator is one run of the coordinator (see core.context._RunFlags): it ends
    # when the generator does, which clears an interruption.
    source = [
        "def run_lines(batches, worker, clean_line, put, emit, tally):",
        "    flags.begin()",
        "    try:",
        "        if flags.interrupted:",
        "            return",
        "        number = 0",
        "        index = -1",
        "        for lines in batches:",
        "            clean = 0",
        "            loads = loads_exact if type(lines) is WideLines else orjson_loads",
        "            for line, data in enumerate(lines, number + 1):",
        "                try:",
        "                    value = loads(data)",
        "                except decode_error as exc:",
        "                    if not data.strip():",
        "                        continue",
        "                    index += 1",
        f"                    item = InvalidLine(line, reason(data, exc), {raw}, index)",
        "                    if emit(on_invalid(item, index)) or flags.interrupted:",
        "                        yield clean",
        "                        return",
        "                    continue",
        "                index += 1",
        f"                raw = {raw}",
    ]
    # A record that did not end clean: its Result keeps the bag, so the worker gets a new one.
    source += spell(
        body,
        4,
        lambda result: [
            f"result = {result}",
            "worker.ctx.bag = DataBag(names)",
            "if emit(result) or flags.interrupted:",
            "    yield clean",
            "    return",
            "continue",
        ],
    )
    source += [
        "            number += len(lines)",
        "            yield clean",
        "    finally:",
        "        flags.end()",
    ]
    namespace.update(extra)
    return Generated("\n".join(source) + "\n", namespace, ("run_lines",))
