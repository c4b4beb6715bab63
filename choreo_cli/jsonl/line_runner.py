"""`choreo run`'s serial loop: a compiled record runner fused with JSON parsing and writing.

``run_lines(coordinator, batches, ...)`` runs JSON Lines given as lists of lines, one
record at a time, and never builds the Result of a record that ran every step without an
error: its line is written from a template. The record code is the compiled runners'
(``choreo_cli.core.compiled``); this module adds the parsing of each line and the
templates of the lines it writes. With ``CHOREO_RUNNER=interpreted`` the same loop is
run as plain Python over the reference runner (``interpret_line_runner``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from choreo_cli.core.compiled import Generated, define, record_body, reference_selected, spell
from choreo_cli.jsonl.lines import SkipLines
from choreo_cli.jsonl.numbers import WideLines, loads_exact, loads_for
from choreo_cli.jsonl.reader import invalid_line

if TYPE_CHECKING:
    from choreo_cli.core.coordinator import Coordinator
    from choreo_cli.core.plan import Plan
    from choreo_cli.core.result import Result
    from choreo_cli.core.watchdog import Stuck
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

    Examples:
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
    if coordinator.plan.has_timeout:
        return carried_lines(
            coordinator,
            batches,
            clean_line=clean_line,
            put=put,
            emit=emit,
            keep_raw=keep_raw,
            tally=tally,
        )
    runner: LineRunner = coordinator.compiled(
        ("run_lines", keep_raw), lambda plan: build_line_runner(plan, keep_raw=keep_raw)
    )
    return runner(batches, coordinator.local_worker(), clean_line, put, emit, tally)


def carried_lines(
    coordinator: Coordinator,
    batches: Iterable[list[bytes]],
    *,
    clean_line: bytes,
    put: Callable[[bytes], Any],
    emit: Callable[[Result], Any],
    keep_raw: bool,
    tally: Callable[[Result], Any] | None,
) -> Iterator[int]:
    """``run_lines`` for a plan with a timeout: each list of lines runs on the
    coordinator's carrier (core.workers.Carrier) while this thread reads the input and
    waits, so that a call the watchdog gives up on does not hold the loop (see
    core/watchdog.py). The records run in the same compiled loop, its position kept from
    one list to the next; ``put`` and ``emit`` are called on the carrier's thread, while
    this one waits.

    When the watchdog gives up on a call, the stuck record ends on the carrier's fresh
    thread (StepTimeout, or the next attempt of a retried job), its Result is emitted
    here, and the rest of the list runs on in a fresh loop from the next line.
    """
    from choreo_cli.core.workers import Stalled, carried_result

    runner = coordinator.compiled(
        ("run_lines", keep_raw, "resumable"),
        lambda plan: build_line_runner(plan, keep_raw=keep_raw, resumable=True),
    )
    carrier = coordinator.carrier_for(coordinator.local_worker())
    flags = coordinator.plan.flags
    handed = _Handed(emit, tally)
    feed = _Feed()
    # The loop on the carrier (None: start one, after line ``number`` and record ``index``).
    loop: list[Iterator[int]] = []
    number, index = 0, -1

    def advance(worker: Worker) -> int:
        if not loop:
            loop.append(
                runner(feed, worker, clean_line, put, handed.emit, handed.tally, number, index)
            )
        return next(loop[0])

    flags.begin()  # one run of the coordinator, until this generator ends
    try:
        if flags.interrupted:
            return
        for lines in batches:
            clean = 0
            first = number  # lines before ``lines`` that the loop on the carrier knows
            while True:
                handed.count = 0
                feed.lines = lines
                try:
                    clean += carrier.call(advance)
                    break
                except Stalled as stalled:
                    stuck = stalled.stuck
                    loop.clear()
                assert stuck.line is not None
                k = stuck.line - first - 1  # the stuck record's place in ``lines``
                # Records before it that were written as clean lines (not handed over).
                clean += sum(1 for data in lines[:k] if data.strip()) - handed.count
                finish = _finisher(coordinator, lines[k] + b"\n" if keep_raw else None)
                result = carried_result(carrier, functools.partial(finish, stuck), finish)
                if result.clean:
                    put(clean_line % (stuck.index, stuck.line))
                    clean += 1
                elif emit(result):
                    handed.stopped = True
                if handed.stopped or flags.interrupted:
                    break
                number, index = stuck.line, stuck.index
                first, lines = number, _rest(lines, k + 1)
            yield clean
            if handed.stopped or flags.interrupted:
                return
            number = first + len(lines)
    finally:
        flags.end()


def _finisher(coordinator: Coordinator, raw: bytes | None) -> Callable[[Stuck, Worker], Result]:
    """What ends a stuck record whose input line is ``raw`` (see ``carried_lines``)."""

    def finish(stuck: Stuck, worker: Worker) -> Result:
        return coordinator.finish_stuck(stuck, raw, worker)

    return finish


def _rest(lines: list[bytes], start: int) -> list[bytes]:
    """``lines[start:]``, a ``WideLines`` still when ``lines`` is one (parsed exactly)."""
    rest = lines[start:]
    return WideLines(rest) if type(lines) is WideLines else rest


class _Feed:
    """The lists of lines of the loop on the carrier: the one the caller handed it last."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[bytes] | None = None

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> list[bytes]:
        lines = self.lines
        if lines is None:
            raise StopIteration
        self.lines = None
        return lines


class _Handed:
    """``emit`` and ``tally``, counting the records handed to them (the others are clean
    lines) and whether ``emit`` asked to stop."""

    __slots__ = ("_emit", "_tally", "count", "stopped", "tally")

    def __init__(
        self, emit: Callable[[Result], Any], tally: Callable[[Result], Any] | None
    ) -> None:
        self._emit = emit
        self._tally = tally
        self.count = 0
        self.stopped = False
        self.tally = None if tally is None else self._tallied

    def emit(self, result: Result) -> Any:
        self.count += 1
        stop = self._emit(result)
        if stop:
            self.stopped = True
        return stop

    def _tallied(self, result: Result) -> Any:
        self.count += 1
        assert self._tally is not None
        return self._tally(result)


def build_line_runner(plan: Plan, *, keep_raw: bool, resumable: bool = False) -> Any:
    """The compiled line runner, or the interpreted one when ``CHOREO_RUNNER=interpreted``
    (see ``choreo_cli.core.interpreted``). ``resumable``: a ``ResumableLineRunner``."""
    if reference_selected():
        return interpret_line_runner(plan, keep_raw=keep_raw, resumable=resumable)
    return compile_line_runner(plan, keep_raw=keep_raw, resumable=resumable)


def compile_line_runner(plan: Plan, *, keep_raw: bool, resumable: bool = False) -> Any:
    """``run_lines`` of ``line_source``, defined."""
    return define(line_source(plan, keep_raw=keep_raw, resumable=resumable), plan)[0]


def interpret_line_runner(plan: Plan, *, keep_raw: bool, resumable: bool = False) -> Any:
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
            yield from run_lines_from(batches, worker, clean_line, put, emit, tally, 0, -1)
        finally:
            flags.end()

    def run_lines_from(
        batches: Iterable[list[bytes]],
        worker: Worker,
        clean_line: bytes,
        put: Callable[[bytes], Any],
        emit: Callable[[Result], Any],
        tally: Callable[[Result], Any] | None,
        number: int,  # lines before the first list (blank ones too)
        index: int,  # the last record's number (every non-blank line counts)
    ) -> Iterator[int]:
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
                    result = invalid(invalid_line(line, data, exc, keep_raw, index), index)
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

    return run_lines_from if resumable else run_lines


def line_source(plan: Plan, *, keep_raw: bool, resumable: bool = False) -> Generated:
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

    ``resumable``: the source of ``run_lines(batches, worker, clean_line, put, emit,
    tally, number, index)``, the same loop started after line ``number`` and record
    ``index``, and no run of its own (``carried_lines`` holds the run, and starts a loop
    again after a record whose call the watchdog gave up on).
    """
    skip_lines = SkipLines()
    extra: dict[str, Any] = {
        "orjson_loads": orjson.loads,
        "loads_exact": loads_exact,
        "WideLines": WideLines,
        "decode_error": orjson.JSONDecodeError,
        "invalid_line": invalid_line,
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
    # Indents of the loop: inside the run's try block, or at the function's level.
    base = 1 if resumable else 2
    loop = [
        "for lines in batches:",
        "    clean = 0",
        "    loads = loads_exact if type(lines) is WideLines else orjson_loads",
        "    for line, data in enumerate(lines, number + 1):",
        "        try:",
        "            value = loads(data)",
        "        except decode_error as exc:",
        "            if not data.strip():",
        "                continue",
        "            index += 1",
        f"            item = invalid_line(line, data, exc, {keep_raw}, index)",
        "            if emit(on_invalid(item, index)) or flags.interrupted:",
        "                yield clean",
        "                return",
        "            continue",
        "        index += 1",
        f"        raw = {raw}",
    ]
    loop = ["    " * base + line for line in loop]
    # A record that did not end clean: its Result keeps the bag, so the worker gets a new one.
    loop += spell(
        body,
        base + 2,
        lambda result: [
            f"result = {result}",
            "worker.ctx.bag = DataBag(names)",
            "if emit(result) or flags.interrupted:",
            "    yield clean",
            "    return",
            "continue",
        ],
    )
    loop += ["    " * base + "    number += len(lines)", "    " * base + "    yield clean"]
    if resumable:
        source = [
            "def run_lines(batches, worker, clean_line, put, emit, tally, number, index):",
            *loop,
        ]
    else:
        # The generator is one run of the coordinator (see core.context._RunFlags): it
        # ends when the generator does, which clears an interruption.
        source = [
            "def run_lines(batches, worker, clean_line, put, emit, tally):",
            "    flags.begin()",
            "    try:",
            "        if flags.interrupted:",
            "            return",
            "        number = 0",
            "        index = -1",
            *loop,
            "    finally:",
            "        flags.end()",
        ]
    namespace.update(extra)
    return Generated("\n".join(source) + "\n", namespace, ("run_lines",))
