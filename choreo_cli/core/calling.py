"""The general call path of a step callable: record conversion, async, limits, timeout, retry.

The compiled runner calls plain callables directly (a timed one between the two lines of
its deadline slot); everything else goes through here. A timeout is the watchdog's
(watchdog.py): the call runs inline, its deadline slot set around it. A callable with
limits waits for them (limits.py) before each attempt, outside its deadline: the wait
does not count toward its timeout.
"""

from __future__ import annotations

import contextvars
import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from choreo_cli.core.limits import LimitWaitInterrupted, polling_sleep
from choreo_cli.core.signatures import CallSpec, Mismatch, json_type_name
from choreo_cli.core.watchdog import arm, disarm
from choreo_cli.errors import Cancel, StepDefinitionError, StepTimeout, UnassignableInput

if TYPE_CHECKING:
    from choreo_cli.core.context import Context, _RunFlags
    from choreo_cli.core.limits import Gate
    from choreo_cli.core.step import Planned, Step
    from choreo_cli.core.watchdog import Timed
    from choreo_cli.core.workers import Worker

T = TypeVar("T")


class InputMismatch(Exception):
    def __init__(self, error: UnassignableInput) -> None:
        super().__init__(str(error))
        self.error = error


def invoke(
    spec: CallSpec,
    ctx: Context,
    value: Any,
    worker: Worker,
    planned: Planned | None,
    timed: Timed | None,
    flags: _RunFlags,
    gate: Gate | None = None,
) -> Any:
    """The general call path: record conversion, async callables, limits, timeout and retry.

    ``timed`` is the call's token when its step has a timeout (``Plan.timed``); ``gate``
    the limits it waits for before each attempt (``Plan.gates``).
    """
    arg = converted(spec, ctx, value)
    if planned is None or planned.retry is None or spec is not planned.job:
        if gate is None:
            return call(spec, ctx, arg, worker, timed)
        return limited_call(gate, spec, ctx, arg, worker, timed, flags)
    return retry(planned, ctx, arg, worker, timed, flags, gate=gate)


def limited_call(
    gate: Gate,
    spec: CallSpec,
    ctx: Context,
    arg: Any,
    worker: Worker,
    timed: Timed | None,
    flags: _RunFlags,
) -> Any:
    """``call`` once the callable's limits let it start; they are left when it ends.

    An interruption during the wait abandons the record (it is cancelled).
    """
    enter_gate(gate, flags)
    try:
        return call(spec, ctx, arg, worker, timed)
    finally:
        gate.leave()


def enter_gate(gate: Gate, flags: _RunFlags) -> None:
    """Wait for a gate's limits; raise Abandoned when the run is interrupted meanwhile."""
    try:
        gate.enter(flags.wait_interrupted)
    except LimitWaitInterrupted as exc:
        raise Abandoned(str(exc)) from None


async def aenter_gate(gate: Gate, flags: _RunFlags) -> None:
    """``enter_gate`` for an async callable: the loop goes on while it waits."""
    try:
        await gate.aenter(polling_sleep(lambda: flags.interrupted))
    except LimitWaitInterrupted as exc:
        raise Abandoned(str(exc)) from None


def converted(spec: CallSpec, ctx: Context, value: Any) -> Any:
    """The record as the callable declares it (converted once per record), or the raw value."""
    adapter = spec.adapter
    if adapter is None or not spec.takes_record or value is None:
        return value
    conv = ctx._conv
    if conv is None:
        conv = ctx._conv = {}
    try:
        return conv[adapter]
    except KeyError:
        try:
            arg = conv[adapter] = adapter(value)
        except Mismatch as exc:
            raise InputMismatch(
                UnassignableInput(
                    f"step {ctx.step!r}: {spec.name} declares its record as "
                    f"{spec.annotation}, but got a JSON {json_type_name(value)} ({exc})"
                )
            ) from None
        return arg


def call(spec: CallSpec, ctx: Context, arg: Any, worker: Worker, timed: Timed | None) -> Any:
    """One attempt of a callable, bounded by ``timed.timeout`` seconds when given.

    A sync callable runs inline with the worker's deadline slot set: past the deadline
    the watchdog fails the record and abandons this thread (watchdog.py). An async one
    is also cancelled by its loop at the deadline, when the loop comes back to it.
    """
    if timed is None:
        result = spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx)
        return worker.run_coroutine(result) if spec.is_async else result
    slot = worker.slot
    arm(slot, timed)
    try:
        if not spec.is_async:
            return spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx)
        import asyncio

        coro = spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx)
        try:
            return worker.run_coroutine(asyncio.wait_for(coro, timed.timeout))
        except asyncio.TimeoutError:
            ctx.timed_out = True
            raise timed_out(ctx, spec, timed.timeout) from None
    finally:
        disarm(slot)


def retry(
    planned: Planned,
    ctx: Context,
    arg: Any,
    worker: Worker,
    timed: Timed | None,
    flags: _RunFlags,
    *,
    attempt: int = 0,
    gate: Gate | None = None,
) -> Any:
    """Call a job up to ``retry.attempts`` times; only the last failure counts. Each
    attempt waits for the job's limits (``gate``) first.

    ``attempt``: the attempts made already (a record resumed after a timeout).
    """
    while True:
        attempt = count_attempt(planned, ctx, attempt)
        try:
            # Each attempt a token of its own: the watchdog tells them apart.
            token = None if timed is None else timed.again()
            if gate is None:
                return call(planned.job, ctx, arg, worker, token)
            return limited_call(gate, planned.job, ctx, arg, worker, token, flags)
        except (Cancel, Abandoned):
            raise
        except Exception as exc:
            ctx = wait_to_retry(planned, ctx, worker, flags, attempt, exc)


def count_attempt(planned: Planned, ctx: Context, previous: int) -> int:
    """Record on ``ctx`` that attempt ``previous + 1`` of the step's job starts; return it."""
    attempt = previous + 1
    if ctx._attempts is None:
        ctx._attempts = {}
    ctx._attempts[planned.name] = attempt
    return attempt


def wait_to_retry(
    planned: Planned,
    ctx: Context,
    worker: Worker,
    flags: _RunFlags,
    attempt: int,
    exc: Exception,
) -> Context:
    """Re-raise ``exc`` if the policy does not retry it (or attempts are used up); else log
    the failed attempt, wait the policy's delay and return the Context for the next one."""
    policy = planned.retry
    assert policy is not None  # only a job with a retry policy is retried
    if attempt >= policy.attempts or not isinstance(exc, policy.on):
        raise exc
    wait = policy.wait(attempt)
    ctx.log.warning(
        "attempt %d of %d failed (%s: %s); retrying in %.3g s",
        attempt,
        policy.attempts,
        type(exc).__name__,
        exc,
        wait,
    )
    if flags.wait_interrupted(wait):
        raise Abandoned(f"interrupted while waiting to retry step {planned.name!r}") from exc
    if ctx.timed_out:  # a timed-out attempt left ctx behind: use a fresh one
        ctx = worker.renew_context(ctx)
    return ctx


def check_options(step: Step, job_name: str) -> None:
    """Refuse retry/timeout settings that could never take effect (never silently nothing)."""

    def fail(reason: str) -> StepDefinitionError:
        return StepDefinitionError(reason, step=step.name, phase="job", callable_name=job_name)

    if step.timeout is not None and not step.timeout > 0:
        raise fail(f"timeout must be a positive number of seconds, not {step.timeout!r}")
    retry = step.retry
    if retry is None:
        return
    if retry.attempts < 2:
        raise fail(
            f"retry.attempts is {retry.attempts}: the job would never be retried; "
            "set it to 2 or more, or remove retry"
        )
    from choreo_cli.core.retry import refused_exception

    for cls in retry.on:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise fail(f"retry.on: {cls!r} is not an exception class")
        refused = refused_exception(cls)
        if refused is not None:
            raise fail(f"retry.on: {refused}")


class Abandoned(Exception):
    pass


def timed_out(ctx: Context, spec: CallSpec, timeout: float) -> StepTimeout:
    return StepTimeout(f"{spec.name} ran past the step's timeout of {timeout:g} s")


# -- the async call path of a worker thread's serving task (see workers.ThreadPool) ----------


def ainvoke(
    spec: CallSpec,
    ctx: Context,
    value: Any,
    worker: Worker,
    planned: Planned | None,
    timed: Timed | None,
    flags: _RunFlags,
    gate: Gate | None = None,
) -> Awaitable[Any]:
    """``invoke`` for an async callable, for a record that runs in a task on its worker's
    loop: what to await. The callable's coroutine is awaited in place, not run as a task
    of its own: the same semantics, for one task and one run of the loop less per call
    (see workers.ThreadPool._serve_async)."""
    arg = converted(spec, ctx, value)
    if planned is None or planned.retry is None or spec is not planned.job:
        if gate is not None:
            return alimited_call(gate, spec, ctx, arg, worker, timed, flags)
        if timed is None:
            return awaited(spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx), worker)
        return acall(spec, ctx, arg, worker, timed)
    return aretry(planned, ctx, arg, worker, timed, flags, gate)


async def alimited_call(
    gate: Gate,
    spec: CallSpec,
    ctx: Context,
    arg: Any,
    worker: Worker,
    timed: Timed | None,
    flags: _RunFlags,
) -> Any:
    """``acall`` once the callable's limits let it start (``limited_call`` for a coroutine)."""
    await aenter_gate(gate, flags)
    try:
        return await acall(spec, ctx, arg, worker, timed)
    finally:
        gate.leave()


@types.coroutine
def awaited(coro: Coroutine[Any, Any, T], worker: Worker) -> Generator[Any, Any, T]:
    """Await ``coro`` as a task of its own would run it: each of its steps in a copy of the
    context (what it sets in contextvars does not outlive the call).

    What the coroutine yields (the futures it waits on) goes up to the awaiting task, and
    what the task sends or throws (a result, a cancellation) comes back down to it.
    """
    run = contextvars.copy_context().run
    try:
        try:
            yielded = run(coro.send, None)
            while True:
                try:
                    sent = yield yielded
                except GeneratorExit:
                    run(coro.close)
                    raise
                except BaseException as exc:
                    yielded = run(coro.throw, exc)
                else:
                    yielded = run(coro.send, sent)
        except StopIteration as stop:
            result: T = stop.value
    except BaseException as exc:
        _raise_escaped(worker, exc)
    _settle(worker)
    return result


async def acall(spec: CallSpec, ctx: Context, arg: Any, worker: Worker, timed: Timed | None) -> Any:
    """One attempt of an async callable, as ``call`` makes it: the loop cancels it at the
    deadline, and the watchdog abandons the thread if the loop does not come back."""
    coro = spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx)
    if timed is None:
        return await awaited(coro, worker)
    import asyncio

    slot = worker.slot
    arm(slot, timed)
    try:
        try:  # wait_for runs the coroutine as a task of its own
            result = await asyncio.wait_for(coro, timed.timeout)
        except asyncio.TimeoutError:
            _settle(worker)
            ctx.timed_out = True
            raise timed_out(ctx, spec, timed.timeout) from None
        except BaseException as exc:
            _raise_escaped(worker, exc)
    finally:
        disarm(slot)
    _settle(worker)
    return result


async def aretry(
    planned: Planned,
    ctx: Context,
    arg: Any,
    worker: Worker,
    timed: Timed | None,
    flags: _RunFlags,
    gate: Gate | None = None,
) -> Any:
    """``retry`` for an async job."""
    attempt = 0
    while True:
        attempt = count_attempt(planned, ctx, attempt)
        try:
            token = None if timed is None else timed.again()
            if gate is None:
                return await acall(planned.job, ctx, arg, worker, token)
            return await alimited_call(gate, planned.job, ctx, arg, worker, token, flags)
        except (Cancel, Abandoned):
            raise
        except Exception as exc:
            ctx = wait_to_retry(planned, ctx, worker, flags, attempt, exc)


def _escaped(worker: Worker) -> BaseException | None:
    """What was raised out of the loop while a call was awaited, taken: a call run with
    ``run()`` would have raised that, whatever the callable went on to do."""
    escaped = worker.escaped
    worker.escaped = None
    return escaped


def _raise_escaped(worker: Worker, exc: BaseException) -> NoReturn:
    """Raise what was raised out of the loop while the call was awaited, or else ``exc``
    (what the call itself raised)."""
    escaped = _escaped(worker)
    if escaped is None or escaped is exc:
        raise exc
    raise escaped from None


def _settle(worker: Worker) -> None:
    """Raise, at the end of an awaited call that returned, what a task of its own would
    have ended with: what was raised out of the loop meanwhile, or a cancellation the
    callable requested for its task and never let be delivered (the worker then goes on
    in a fresh task, see workers.ThreadPool._serve_async)."""
    escaped = worker.escaped
    if escaped is not None:
        worker.escaped = None
        raise escaped
    if worker.task is not None and getattr(worker.task, "_must_cancel", False):
        import asyncio

        raise asyncio.CancelledError()
