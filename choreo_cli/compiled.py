"""Compile a coordinator's steps into the Python functions that run records.

The per-record path is choreo's hot loop. A loop over step descriptions pays, for every
step of every record, for unpacking the description and testing how to call each
callable. Here those decisions are taken once, when the steps are known: the steps are
unrolled into straight-line code whose only per-step work is the interruption check, the
calls and storing what they return. The rare paths (a Skip, an error, an interruption)
call back into the coordinator, so the semantics live in one place (coordinator.py) and
this module only decides *how* the common path is spelled. This is what dataclasses and
attrs do for ``__init__``.

The same record code is spelt four ways: ``run`` (one record), ``run_serial`` (a stream
of items, one worker), ``run_lines`` (JSON lines parsed in the loop, and the line of a
record without errors written from a template: `choreo run`'s loop) and ``run_async``
(one record, awaiting its async callables on the worker's event loop: the thread pool's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

import orjson

from choreo_cli.calling import awaited
from choreo_cli.context import DataBag
from choreo_cli.errors import Skip
from choreo_cli.items import InvalidLine, Record
from choreo_cli.output import SkipTemplates
from choreo_cli.records import reason_for

if TYPE_CHECKING:
    from choreo_cli.coordinator import Coordinator, Planned

RecordRunner = Callable[[Any, int, "int | None", "bytes | None", Any], Any]
SerialRunner = Callable[[Iterable[Any], Any], Iterator[Any]]
AsyncRecordRunner = Callable[[Any, int, "int | None", "bytes | None", Any], Awaitable[Any]]
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


def compile_runner(
    coordinator: Coordinator, plan: list[Planned]
) -> tuple[RecordRunner, SerialRunner]:
    """Compile the steps into ``run(value, index, line, raw, worker) -> Result`` (one record)
    and ``run_serial(records, worker)`` (a generator of Results, one worker, no call per
    record); both spell out the same step code."""
    namespace = _namespace(coordinator)
    body = _record_body(
        namespace, plan, dry=coordinator._flags.dry_run, timings=coordinator.timings
    )
    single = ["def run(value, index, line, raw, worker):"]
    single += _spell(body, 1, lambda result: [f"return {result}"])
    serial = [
        "def run_serial(records, worker):",
        "    if flags.interrupted:",
        "        return",
        "    for index, item in enumerate(records):",
        "        cls = type(item)",
        "        if cls is Record:",
        "            value = item.value",
        "            line = item.line",
        "            raw = item.raw",
        "            if item.index is not None:",
        "                index = item.index",
        "        elif cls is InvalidLine:",
        "            yield on_invalid(item, index if item.index is None else item.index)",
        "            if flags.interrupted:",
        "                return",
        "            continue",
        "        else:",
        "            value = item",
        "            line = raw = None",
    ]
    # A record's end: hand its Result over, then stop reading if interrupted.
    serial += _spell(
        body,
        2,
        lambda result: [f"yield {result}", "if flags.interrupted:", "    return", "continue"],
    )
    source = "\n".join(single) + "\n\n\n" + "\n".join(serial) + "\n"
    run, run_serial = _define(source, ("run", "run_serial"), namespace, coordinator)
    return run, run_serial


def compile_async_runner(coordinator: Coordinator, plan: list[Planned]) -> AsyncRecordRunner:
    """Compile the steps into ``async def run_async(value, index, line, raw, worker)``: the
    code of ``run``, for a record run by a task on the worker's event loop (the thread
    pool's, see workers.py), which awaits each async callable in place."""
    from asyncio import events

    namespace = _namespace(coordinator)
    namespace["ainvoke"] = coordinator._ainvoke
    namespace["awaited"] = awaited
    namespace["leave_loop"] = events._set_running_loop
    body = _record_body(
        namespace, plan, dry=coordinator._flags.dry_run, timings=coordinator.timings, awaiting=True
    )
    source = ["async def run_async(value, index, line, raw, worker):"]
    source += _spell(body, 1, lambda result: [f"return {result}"])
    run_async: AsyncRecordRunner = _define(
        "\n".join(source) + "\n", ("run_async",), namespace, coordinator
    )[0]
    return run_async


def _spell(body: list[str], indent: int, end: Callable[[str], list[str]]) -> list[str]:
    """``body`` indented ``indent`` levels, each ``EXIT x`` replaced by the lines ``end(x)``."""
    lines: list[str] = []
    for line in body:
        stripped = line.lstrip(" ")
        pad = "    " * indent + " " * (len(line) - len(stripped))
        if stripped.startswith("EXIT "):
            lines += [pad + code for code in end(stripped[len("EXIT ") :])]
        else:
            lines.append(pad + stripped)
    return lines


def _define(
    source: str, names: tuple[str, ...], namespace: dict[str, Any], coordinator: Coordinator
) -> list[Any]:
    """Run ``source`` in ``namespace``; return the functions ``names`` it defines, each with
    the source as its docstring (what runs, for whoever debugs it)."""
    code = compile(source, f"<choreo steps of coordinator {id(coordinator):#x}>", "exec")
    exec(code, namespace)
    functions = [namespace[name] for name in names]
    for function in functions:
        function.__doc__ = source
    return functions


def _namespace(coordinator: Coordinator) -> dict[str, Any]:
    """The names the generated code uses: the coordinator's rare paths and helpers."""
    return {
        "perf_counter": perf_counter,
        "_new": object.__new__,
        "DataBag": DataBag,
        "Skip": Skip,
        "Record": Record,
        "InvalidLine": InvalidLine,
        "names": coordinator._names,
        "flags": coordinator._flags,
        "Clean": coordinator._clean,
        "on_skip": coordinator._on_skip,
        "on_precheck_error": coordinator._on_precheck_error,
        "on_job_error": coordinator._on_job_error,
        "on_interrupted": coordinator._on_interrupted,
        "on_invalid": coordinator._invalid,
        "finish": coordinator._finish,
        "invoke": coordinator._invoke,
    }


def compile_line_runner(
    coordinator: Coordinator, plan: list[Planned], *, keep_raw: bool
) -> LineRunner:
    """Compile the steps into ``run_lines(batches, worker, clean_line, put, emit, tally)``:
    the serial loop of `choreo run`, fused with JSON parsing and the writing of lines.

    ``batches`` yields lists of input lines (bytes, without their ``\n``), as
    ``JsonlReader.iter_line_lists`` does. Each record that ran every step without an error
    costs no Record and no Result: ``put(clean_line % (index, line))`` writes its line.
    With ``tally``, a record that succeeded with skipped jobs (a re-run's common record)
    costs no Result either once its pattern is known: its line from the pattern's
    template goes to ``put``, and ``tally`` gets the pattern's Result (for the counts).
    Every other record (invalid, failed, cancelled, the first of a skip pattern) is built
    by the coordinator's rare paths and handed to ``emit(result)``; a true return stops
    reading. The generator yields, after each batch, how many clean records it held; it
    stops after the first record ended by an interruption.
    """
    skip_templates = SkipTemplates()
    namespace: dict[str, Any] = {
        **_namespace(coordinator),
        "loads": orjson.loads,
        "decode_error": orjson.JSONDecodeError,
        "reason": reason_for,
        "skip_line": skip_templates.line,
        "learn_skips": skip_templates.learn,
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
    # pattern teaches it.
    # A job with retry: puts ``attempts`` in the line, which no template has (today its
    # pattern never gets one, since every such line has attempts: this keeps it so).
    retries = " and ctx._attempts is None" if any(p.retry is not None for p in plan) else ""
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
        f"    result = finish(ctx, raw, started, errors, skipped, {len(plan)})",
        "    learn_skips(pattern, result)",
        "    EXIT result",
    ]
    body = _record_body(
        namespace,
        plan,
        dry=coordinator._flags.dry_run,
        timings=coordinator.timings,
        clean_exit=clean_exit,
        reuse_bag=True,
        skip_exit=skip_exit,
    )
    raw = "data + NEWLINE" if keep_raw else "None"
    namespace["NEWLINE"] = b"\n"
    source = [
        "def run_lines(batches, worker, clean_line, put, emit, tally):",
        "    if flags.interrupted:",
        "        return",
        "    number = 0",
        "    index = -1",
        "    for lines in batches:",
        "        clean = 0",
        "        for line, data in enumerate(lines, number + 1):",
        "            try:",
        "                value = loads(data)",
        "            except decode_error as exc:",
        "                if not data.strip():",
        "                    continue",
        "                index += 1",
        f"                item = InvalidLine(line, reason(data, exc), {raw}, index)",
        "                if emit(on_invalid(item, index)) or flags.interrupted:",
        "                    yield clean",
        "                    return",
        "                continue",
        "            index += 1",
        f"            raw = {raw}",
    ]
    # A record that did not end clean: its Result keeps the bag, so the worker gets a new one.
    source += _spell(
        body,
        3,
        lambda result: [
            f"result = {result}",
            "worker.ctx.bag = DataBag(names)",
            "if emit(result) or flags.interrupted:",
            "    yield clean",
            "    return",
            "continue",
        ],
    )
    source += ["        number += len(lines)", "        yield clean"]
    run_lines: LineRunner = _define(
        "\n".join(source) + "\n", ("run_lines",), namespace, coordinator
    )[0]
    return run_lines


def _record_body(
    namespace: dict[str, Any],
    plan: list[Planned],
    *,
    dry: bool,
    timings: bool,
    clean_exit: list[str] | None = None,
    reuse_bag: bool = False,
    awaiting: bool = False,
    skip_exit: list[str] | None = None,
) -> list[str]:
    """The code of one record, at indent 0; ``EXIT x`` marks where the record ends with x.

    ``clean_exit``: the code that ends a record without errors, instead of building its
    Result. ``reuse_bag``: empty the worker's DataBag for the record instead of making
    one (the code at each ``EXIT`` must then give the worker a new bag, since the Result
    keeps the old one). ``awaiting``: the code of an ``async def`` that runs on the
    worker's event loop (see compile_async_runner). ``skip_exit``: code run before the
    Result of a record that ran every step with errors (prechecks that skipped jobs) is
    built; it may end the record itself.
    """
    # Reading the clock twice is a third of the cost of a trivial record: without timings
    # (choreo run writes none) ``duration`` is None.
    lines = ["started = perf_counter()" if timings else "started = None", "ctx = worker.ctx"]
    if reuse_bag:
        lines += ["bag = ctx.bag"]
    else:
        lines += ["bag = _new(DataBag)", "ctx.bag = bag"]
    lines += [
        "bag._job = bag._pre = None",
        "bag._names = names",
        "ctx.record = value",
        "ctx.index = index",
        "ctx.line = line",
    ]
    # Only record conversion (the general call path) fills ``_conv``, and only a timeout
    # sets ``timed_out``: a plan without them has nothing of the kind to reset.
    if any(spec.adapter is not None for p in plan for spec in (p.pre, p.job) if spec):
        lines.append("ctx._conv = None")
    if any(p.timeout is not None for p in plan):
        lines.append("ctx.timed_out = False")
    lines.append("errors = skipped = None")
    if skip_exit:
        # Bit i: the precheck of step i raised Skip; -1 (every bit, for good): another
        # exception skipped a job.
        lines.append("pattern = 0")
    for i, planned in enumerate(plan):
        namespace[f"frame_{i}"] = planned.frame
        namespace[f"key_{i}"] = planned.key
        namespace[f"step_{i}"] = planned
        general = planned.timeout is not None
        lines += [
            f"# step {i}: {planned.name!r}",
            "if flags.interrupted:",
            f"    EXIT on_interrupted(ctx, raw, started, errors, skipped, {i})",
            f"ctx._frame = frame_{i}",
        ]
        job_indent = ""
        if planned.pre is not None:
            call = _call(namespace, f"pre_{i}", planned.pre, f"step_{i}.pre", general, awaiting)
            lines += [
                "try:",
                *(f"    {c}" for c in call),
                "except Skip as exc:",
                f"    errors, skipped = on_skip(exc, {i}, bag, errors, skipped)",
                *([f"    pattern |= {1 << i}"] if skip_exit else []),
                "except BaseException as exc:",
                f"    errors, skipped, stopped = on_precheck_error(exc, {i}, ctx, raw, started, errors, skipped)",
                "    if stopped is not None:",
                "        EXIT stopped",
                # Another exception than Skip: its type is in the line (no template).
                *(["    pattern = -1"] if skip_exit else []),
                "else:",
                "    if v is not None:",
                "        if bag._pre is None:",
                f"            bag._pre = {{key_{i}: v}}",
                "        else:",
                f"            bag._pre[key_{i}] = v",
            ]
            job_indent = "    "
        if dry:
            continue
        call = _call(
            namespace,
            f"job_{i}",
            planned.job,
            f"step_{i}.job",
            general or planned.retry is not None,
            awaiting,
        )
        job = [
            "try:",
            *(f"    {c}" for c in call),
            "except BaseException as exc:",
            f"    EXIT on_job_error(exc, {i}, ctx, raw, started, errors, skipped)",
            "if v is not None:",
            "    if bag._job is None:",
            f"        bag._job = {{key_{i}: v}}",
            "    else:",
            f"        bag._job[key_{i}] = v",
        ]
        lines += [job_indent + line for line in job]
    if clean_exit is None:
        clean_exit = [
            "result = _new(Clean)",
            "result.index = index",
            "result.line = line",
            "result.input = value",
            "result.raw = raw",
            "result.bag = bag",
            "result.duration = perf_counter() - started" if timings else "result.duration = None",
            "EXIT result",
        ]
    # Only a retry records attempts: without one, no error means a clean record.
    retries = any(p.retry is not None for p in plan)
    lines += [
        "if errors is None and ctx._attempts is None:" if retries else "if errors is None:",
        *(f"    {line}" for line in clean_exit),
        *(skip_exit or []),
        f"EXIT finish(ctx, raw, started, errors, skipped, {len(plan)})",
    ]
    return lines


def _call(
    namespace: dict[str, Any],
    slot: str,
    spec: Any,
    spec_expr: str,
    general: bool,
    awaiting: bool = False,
) -> list[str]:
    """The lines that call one callable and leave what it returned in ``v``."""
    if not awaiting:
        return _plain_call(namespace, slot, spec, spec_expr, general)
    if spec.is_async:
        if general or spec.adapter is not None:
            return [f"v = await ainvoke({spec_expr}, ctx, value, worker)", "ctx = worker.ctx"]
        namespace[slot] = spec.fn
        args = "ctx, value" if spec.takes_record else "ctx"
        return [f"v = await awaited({slot}({args}), worker)"]
    # A plain callable called from a coroutine: it must not see the worker's loop running
    # (it may run a loop of its own, with asyncio.run, as on a thread without one).
    return [
        "leave_loop(None)",
        "try:",
        *(f"    {line}" for line in _plain_call(namespace, slot, spec, spec_expr, general)),
        "finally:",
        "    leave_loop(worker.loop)",
    ]


def _plain_call(
    namespace: dict[str, Any], slot: str, spec: Any, spec_expr: str, general: bool
) -> list[str]:
    if general or spec.is_async or (spec.adapter is not None and spec.check is None):
        # Record conversion, async, timeout or retry: the coordinator's general path.
        return [f"v = invoke({spec_expr}, ctx, value, worker)", "ctx = worker.ctx"]
    namespace[slot] = spec.fn
    if not spec.takes_record:
        return [f"v = {slot}(ctx)"]
    if spec.adapter is None:
        return [f"v = {slot}(ctx, value)"]
    # A plain isinstance check (dict, list, str): inline; a mismatch takes the general
    # path, which reports it.
    namespace[f"{slot}_type"] = spec.check
    return [
        f"if value is None or isinstance(value, {slot}_type):",
        f"    v = {slot}(ctx, value)",
        "else:",
        f"    v = invoke({spec_expr}, ctx, value, worker)",
    ]
