"""Compile a coordinator's steps into the Python functions that run records.

The per-record path is choreo's hot loop. A loop over step descriptions pays, for every
step of every record, for unpacking the description and testing how to call each
callable. Here those decisions are taken once, when the steps are known: the steps are
unrolled into straight-line code whose only per-step work is the interruption check, the
calls and storing what they return. The rare paths (a Skip, an error, an interruption)
call back into the plan's ``Outcomes`` (outcomes.py), so the semantics live in one place
and this module only decides *how* the common path is spelled. This is what dataclasses
and attrs do for ``__init__``; ``interpreted.py`` is the same semantics as a plain loop,
the reference these runners are tested against (``CHOREO_RUNNER=interpreted`` selects it).

The same record code is spelt four ways: ``run`` (one record), ``run_serial`` (a stream
of items, one worker), ``run_async`` (one record, awaiting its async callables on the
worker's event loop: the thread pool's) and, in ``choreo_cli.jsonl.line_runner``,
``run_lines`` (JSON lines parsed in the loop: `choreo run`'s loop).

The builders (``record_source``, ``async_source``, ``record_body``) return source and the
names it uses, and change nothing; ``define`` runs the source and registers it with
``linecache`` under a name of its own (``<choreo generated run/run_serial for steps
['a', 'b'] #3>``), so tracebacks, pdb and ``inspect.getsource`` show the generated lines.
The source of each plan shape is pinned in ``tests/unit/generated/`` (see
tests/unit/test_generated.py; ``CHOREO_UPDATE_SNAPSHOTS=1`` rewrites it after a deliberate
change); tests/unit/test_reference_runner.py holds the runners to ``interpreted.py``.
"""

from __future__ import annotations

import itertools
import linecache
import os
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

from choreo_cli.core.calling import Abandoned, awaited, enter_gate
from choreo_cli.core.context import DataBag
from choreo_cli.core.items import InvalidLine, Record
from choreo_cli.core.limits import LimitWaitInterrupted
from choreo_cli.core.timings import begin as begin_timed
from choreo_cli.core.timings import note as note_time
from choreo_cli.core.watchdog import lost
from choreo_cli.errors import Skip

if TYPE_CHECKING:
    from choreo_cli.core.limits import Gate
    from choreo_cli.core.plan import Plan
    from choreo_cli.core.signatures import CallSpec
    from choreo_cli.core.watchdog import Timed

RecordRunner = Callable[[Any, int, "int | None", "bytes | None", Any], Any]
SerialRunner = Callable[[Iterable[Any], Any], Iterator[Any]]
AsyncRecordRunner = Callable[[Any, int, "int | None", "bytes | None", Any], Awaitable[Any]]

_serial_numbers = itertools.count(1)

RUNNER_VARIABLE = "CHOREO_RUNNER"


def reference_selected() -> bool:
    """True when the environment asks for the reference runner: ``CHOREO_RUNNER=interpreted``
    (any other value, or none, runs the compiled code)."""
    return os.environ.get(RUNNER_VARIABLE, "compiled") == "interpreted"


@dataclass(frozen=True)
class Generated:
    """Generated source, the names it reads (``namespace``) and the functions it defines."""

    source: str
    namespace: dict[str, Any]
    functions: tuple[str, ...]


def record_source(plan: Plan) -> Generated:
    """The source of ``run(value, index, line, raw, worker) -> Result`` (one record) and
    ``run_serial(records, worker)`` (a generator of Results, one worker, no call per
    record); both spell out the same step code.

    >>> from choreo_cli.core.coordinator import Coordinator
    >>> from choreo_cli.core.step import Step
    >>> coordinator = Coordinator(timings=False)
    >>> coordinator.add_step(Step(name="greet", job=lambda ctx, record: record))
    >>> print(record_source(coordinator.plan).source.splitlines()[0])
    def run(value, index, line, raw, worker):
    """
    body, namespace = record_body(plan)
    single = ["def run(value, index, line, raw, worker):"]
    single += spell(body, 1, lambda result: [f"return {result}"])
    # The stream is one run of the coordinator (see context._RunFlags): it ends when the
    # generator does (exhausted, raising, closed early), which clears an interruption.
    serial = [
        "def run_serial(records, worker):",
        "    flags.begin()",
        "    try:",
        "        if flags.interrupted:",
        "            return",
        "        for index, item in enumerate(records):",
        "            cls = type(item)",
        "            if cls is Record:",
        "                value = item.value",
        "                line = item.line",
        "                raw = item.raw",
        "                if item.index is not None:",
        "                    index = item.index",
        "            elif cls is InvalidLine:",
        "                yield on_invalid(item, index if item.index is None else item.index)",
        "                if flags.interrupted:",
        "                    return",
        "                continue",
        "            else:",
        "                value = item",
        "                line = raw = None",
    ]
    # A record's end: hand its Result over, then stop reading if interrupted.
    serial += spell(
        body,
        3,
        lambda result: [f"yield {result}", "if flags.interrupted:", "    return", "continue"],
    )
    serial += ["    finally:", "        flags.end()"]
    source = "\n".join(single) + "\n\n\n" + "\n".join(serial) + "\n"
    return Generated(source, namespace, ("run", "run_serial"))


def async_source(plan: Plan) -> Generated:
    """The source of ``async def run_async(value, index, line, raw, worker)``: the code of
    ``run``, for a record run by a task on the worker's event loop (the thread pool's,
    see workers.py), which awaits each async callable in place."""
    from asyncio import events

    body, namespace = record_body(plan, awaiting=True)
    namespace["ainvoke"] = plan.ainvoke
    namespace["awaited"] = awaited
    namespace["leave_loop"] = events._set_running_loop
    source = ["async def run_async(value, index, line, raw, worker):"]
    source += spell(body, 1, lambda result: [f"return {result}"])
    return Generated("\n".join(source) + "\n", namespace, ("run_async",))


def compile_runner(plan: Plan) -> tuple[RecordRunner, SerialRunner]:
    """``run`` and ``run_serial`` of ``record_source``, defined."""
    run, run_serial = define(record_source(plan), plan)
    return run, run_serial


def compile_async_runner(plan: Plan) -> AsyncRecordRunner:
    """``run_async`` of ``async_source``, defined."""
    run_async: AsyncRecordRunner = define(async_source(plan), plan)[0]
    return run_async


def spell(body: list[str], indent: int, end: Callable[[str], list[str]]) -> list[str]:
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


def define(generated: Generated, plan: Plan) -> list[Any]:
    """Run ``generated.source`` in a copy of its namespace and return the functions it
    defines. The source is registered with ``linecache`` under a name of its own (the
    functions and the steps, numbered), for as long as the first function lives."""
    steps = ", ".join(repr(name) for name in plan.step_names[:3])
    if len(plan.step_names) > 3:
        steps += ", ..."
    filename = (
        f"<choreo generated {'/'.join(generated.functions)} for steps "
        f"[{steps}] #{next(_serial_numbers)}>"
    )
    namespace = dict(generated.namespace)
    exec(compile(generated.source, filename, "exec"), namespace)
    functions = [namespace[name] for name in generated.functions]
    lines = generated.source.splitlines(keepends=True)
    linecache.cache[filename] = (len(generated.source), None, lines, filename)
    weakref.finalize(functions[0], linecache.cache.pop, filename, None)
    return functions


def base_namespace(plan: Plan) -> dict[str, Any]:
    """The names every generated runner uses: the plan's rare paths and helpers."""
    outcomes = plan.outcomes
    return {
        "perf_counter": perf_counter,
        "_new": object.__new__,
        "DataBag": DataBag,
        "Skip": Skip,
        "Record": Record,
        "InvalidLine": InvalidLine,
        "names": plan.names,
        "flags": plan.flags,
        "Clean": plan.clean,
        "on_skip": outcomes.on_skip,
        "on_precheck_error": outcomes.on_precheck_error,
        "on_job_error": outcomes.on_job_error,
        "on_interrupted": outcomes.on_interrupted,
        "on_invalid": outcomes.invalid,
        "finish": outcomes.finish,
        "invoke": plan.invoke,
        "enter_gate": enter_gate,
        "LimitWaitInterrupted": LimitWaitInterrupted,
        "Abandoned": Abandoned,
        "lost": lost,
    }


def record_body(
    plan: Plan,
    *,
    clean_exit: list[str] | None = None,
    reuse_bag: bool = False,
    awaiting: bool = False,
    skip_exit: list[str] | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """The code of one record, at indent 0 (``EXIT x`` marks where the record ends with
    x), and the names it reads: twice, once with its calls timed (see core/timings.py).

    A worker's ``countdown`` says how many records run before the next one whose calls
    are timed: the others run exactly the code they would without timings, at the cost
    of one test per record. The options are ``record_lines``'.
    """
    options: dict[str, Any] = {
        "clean_exit": clean_exit,
        "reuse_bag": reuse_bag,
        "awaiting": awaiting,
        "skip_exit": skip_exit,
    }
    plain, namespace = record_lines(plan, **options)
    timed, timed_names = record_lines(plan, timed_calls=True, **options)
    namespace.update(timed_names)
    namespace["begin_timed"] = begin_timed
    namespace["note_time"] = note_time
    lines = [
        "if worker.countdown:",
        "    worker.countdown -= 1",
        *(f"    {line}" for line in plain),
        "else:",
        "    weight = begin_timed(worker)",
        *(f"    {line}" for line in timed),
    ]
    return lines, namespace


def record_lines(
    plan: Plan,
    *,
    clean_exit: list[str] | None = None,
    reuse_bag: bool = False,
    awaiting: bool = False,
    skip_exit: list[str] | None = None,
    timed_calls: bool = False,
) -> tuple[list[str], dict[str, Any]]:
    """The code of one record, at indent 0 (``EXIT x`` marks where the record ends with
    x), and the names it reads.

    ``clean_exit``: the code that ends a record without errors, instead of building its
    Result. ``reuse_bag``: empty the worker's DataBag for the record instead of making
    one (the code at each ``EXIT`` must then give the worker a new bag, since the Result
    keeps the old one). ``awaiting``: the code of an ``async def`` that runs on the
    worker's event loop (see compile_async_runner). ``skip_exit``: code run before the
    Result of a record that ran every step with errors (prechecks that skipped jobs) is
    built; it may end the record itself. ``timed_calls``: each call is timed, with the
    ``weight`` the code before has set (``note_time``, see core/timings.py).
    """
    namespace = base_namespace(plan)
    timings = plan.timings
    # Reading the clock twice is a third of the cost of a trivial record: without timings
    # (choreo run writes none) ``duration`` is None.
    timed = plan.has_timeout
    # A plan with a timeout: timed calls set the worker's deadline slot (watchdog.py),
    # which also keeps what a snapshot of the record needs that is not on ctx.
    lines = ["deadline = worker.slot"] if timed else []
    if timings:
        lines.append(
            "started = deadline.started = perf_counter()" if timed else "started = perf_counter()"
        )
    else:
        lines.append("started = None")
    lines.append("ctx = worker.ctx")
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
    if any(spec.adapter is not None for p in plan.steps for spec in p.specs()):
        lines.append("ctx._conv = None")
    if timed:
        lines.append("ctx.timed_out = False")
    # What the rare paths of a precheck publish for the watchdog's snapshot of the record.
    publish = ["    deadline.errors = (deadline.unit, index, errors, skipped)"] if timed else []
    lines.append("errors = skipped = None")
    if skip_exit:
        # Bit i: the precheck of step i raised Skip; -1 (every bit, for good): another
        # exception skipped a job.
        lines.append("pattern = 0")
    for i, planned in enumerate(plan.steps):
        namespace[f"frame_{i}"] = planned.frame
        namespace[f"key_{i}"] = planned.key
        namespace[f"step_{i}"] = planned
        general = planned.timeout is not None
        # A timeout gives the worker a fresh Context (the late callable keeps the old one):
        # a record that ends in an error must end on the worker's, whose attempts it resets
        # (else the next record would start with them).
        renewed = ["    ctx = worker.ctx"] if general else []
        lines += [
            f"# step {i}: {planned.name!r}",
            "if flags.interrupted:",
            f"    EXIT on_interrupted(ctx, raw, started, errors, skipped, {i})",
            f"ctx._frame = frame_{i}",
        ]
        job_indent = ""
        if planned.pre is not None:
            # A plain callable with limits waits for them inline; any other, on the
            # general path.
            gated = planned.pre_gate is not None
            call = _call(
                namespace,
                f"pre_{i}",
                planned.pre,
                f"step_{i}.pre",
                general,
                awaiting,
                None if gated else plan.timed.get(id(planned.pre)),
                planned.pre_gate,
            )
            noted: list[str] = []
            if timed_calls:
                namespace[f"time_key_{i}_pre"] = (planned.name, "precheck")
                noted = [
                    f"    note_time(worker, time_key_{i}_pre, perf_counter() - call_started, weight)"
                ]
                lines.append("call_started = perf_counter()")
            lines += [
                "try:",
                *(f"    {c}" for c in call),
                "except Skip as exc:",
                *noted,
                f"    errors, skipped = on_skip(exc, {i}, bag, errors, skipped)",
                *publish,
                *([f"    pattern |= {1 << i}"] if skip_exit else []),
                "except BaseException as exc:",
                *noted,
                *renewed,
                f"    errors, skipped, stopped = on_precheck_error(exc, {i}, ctx, raw, started, errors, skipped)",
                *publish,
                "    if stopped is not None:",
                "        EXIT stopped",
                # Another exception than Skip: its type is in the line (no template).
                *(["    pattern = -1"] if skip_exit else []),
                "else:",
                *noted,
                "    if v is not None:",
                "        if bag._pre is None:",
                f"            bag._pre = {{key_{i}: v}}",
                "        else:",
                f"            bag._pre[key_{i}] = v",
            ]
            job_indent = "    "
        if plan.dry_run:
            continue
        inline = planned.retry is None and planned.job_gate is None
        call = _call(
            namespace,
            f"job_{i}",
            planned.job,
            f"step_{i}.job",
            general or planned.retry is not None,
            awaiting,
            plan.timed.get(id(planned.job)) if inline else None,
            planned.job_gate,
        )
        noted = []
        if timed_calls:
            namespace[f"time_key_{i}_job"] = (planned.name, "job")
            noted = [f"note_time(worker, time_key_{i}_job, perf_counter() - call_started, weight)"]
        job = [
            *(["call_started = perf_counter()"] if timed_calls else []),
            "try:",
            *(f"    {c}" for c in call),
            "except BaseException as exc:",
            *(f"    {line}" for line in noted),
            *renewed,
            f"    EXIT on_job_error(exc, {i}, ctx, raw, started, errors, skipped)",
            *noted,
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
    lines += [
        "if errors is None and ctx._attempts is None:" if plan.has_retry else "if errors is None:",
        *(f"    {line}" for line in clean_exit),
        *(skip_exit or []),
        f"EXIT finish(ctx, raw, started, errors, skipped, {len(plan.steps)})",
    ]
    return lines, namespace


def _call(
    namespace: dict[str, Any],
    slot: str,
    spec: CallSpec,
    spec_expr: str,
    general: bool,
    awaiting: bool = False,
    timed: Timed | None = None,
    gate: Gate | None = None,
) -> list[str]:
    """The lines that call one callable and leave what it returned in ``v``.

    ``timed``: the deadline-slot token of a callable whose only reason for the general
    path is its step's timeout: a sync one is then called inline, between the two lines
    that set and clear the worker's deadline slot (watchdog.py). ``gate``: the limits the
    callable waits for; a plain one (no conversion, timeout, retry or async) enters and
    leaves them inline, around the call, as the general path does.
    """
    if not awaiting:
        return _plain_call(namespace, slot, spec, spec_expr, general, timed, gate)
    general = general or gate is not None
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
        *(f"    {line}" for line in _plain_call(namespace, slot, spec, spec_expr, general, timed)),
        "finally:",
        "    leave_loop(worker.loop)",
    ]


def _plain_call(
    namespace: dict[str, Any],
    slot: str,
    spec: CallSpec,
    spec_expr: str,
    general: bool,
    timed: Timed | None = None,
    gate: Gate | None = None,
) -> list[str]:
    if gate is not None:
        if general or spec.is_async or spec.adapter is not None:
            return [f"v = invoke({spec_expr}, ctx, value, worker)", "ctx = worker.ctx"]
        # The general path's limited_call, inline: wait (an interruption meanwhile raises
        # Abandoned: the record is cancelled), call, leave.
        namespace[slot] = spec.fn
        args = "ctx, value" if spec.takes_record else "ctx"
        if len(gate.limits) != 1:
            namespace[f"{slot}_gate"] = gate
            return [
                f"enter_gate({slot}_gate, flags)",
                "try:",
                f"    v = {slot}({args})",
                "finally:",
                f"    {slot}_gate.leave()",
            ]
        # One limit (the usual case): its own enter and leave, bound once; a rate limit
        # has nothing to leave.
        (limit,) = gate.limits
        namespace[f"{slot}_enter"] = limit.enter
        namespace[f"{slot}_leave"] = limit.leave
        namespace["wait_interrupted"] = namespace["flags"].wait_interrupted
        enter = [
            "try:",
            f"    {slot}_enter(wait_interrupted)",
            "except LimitWaitInterrupted as exc:",
            "    raise Abandoned(str(exc)) from None",
        ]
        if not limit.holds:
            return [*enter, f"v = {slot}({args})"]
        return [*enter, "try:", f"    v = {slot}({args})", "finally:", f"    {slot}_leave()"]
    if timed is not None and not spec.is_async and spec.adapter is None:
        namespace[slot] = spec.fn
        namespace[f"{slot}_timed"] = timed
        args = "ctx, value" if spec.takes_record else "ctx"
        return [
            f"deadline.call = {slot}_timed",
            "try:",
            f"    v = {slot}({args})",
            "finally:",
            "    deadline.call = None",
            "    if deadline.lost:",
            "        lost(deadline)",
        ]
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
