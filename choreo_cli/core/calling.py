"""The general call path of a step callable: record conversion, async, timeout, retry.

The compiled runner calls plain callables directly; everything else goes through here.
"""

from __future__ import annotations

import contextvars
import threading
import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from choreo_cli.core.signatures import CallSpec, Mismatch, json_type_name
from choreo_cli.errors import Cancel, StepDefinitionError, StepTimeout, UnassignableInput

if TYPE_CHECKING:
    from choreo_cli.core.context import Context, _RunFlags
    from choreo_cli.core.step import Planned, Step
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
    flags: _RunFlags,
) -> Any:
    """The general call path: record conversion, async callables, timeout and retry."""
    arg = converted(spec, ctx, value)
    if planned is None or (
        planned.timeout is None and (planned.retry is None or spec is not planned.job)
    ):
        return call(spec, ctx, arg, worker, None)
    if planned.retry is None or spec is not planned.job:
        return call(spec, ctx, arg, worker, planned.timeout)
    return retry(planned, ctx, arg, worker, flags)


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


def call(spec: CallSpec, ctx: Context, arg: Any, worker: Worker, timeout: float | None) -> Any:
    """One attempt of a callable, bounded by ``timeout`` seconds when given."""
    if timeout is None:
        result = spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx)
        return worker.run_coroutine(result) if spec.is_async else result
    if spec.is_async:
        import asyncio

        coro = spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx)
        try:
            return worker.run_coroutine(asyncio.wait_for(coro, timeout))
        except asyncio.TimeoutError:
            ctx.timed_out = True
            raise timed_out(ctx, spec, timeout) from None
    return call_with_deadline(spec, ctx, arg, worker, timeout)


def retry(planned: Planned, ctx: Context, arg: Any, worker: Worker, flags: _RunFlags) -> Any:
    """Call a job up to ``retry.attempts`` times; only the last failure counts."""
    attempt = 0
    while True:
        attempt = count_attempt(planned, ctx, attempt)
        try:
            return call(planned.job, ctx, arg, worker, planned.timeout)
        except Cancel:
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


def call_with_deadline(
    spec: CallSpec, ctx: Context, arg: Any, worker: Worker, timeout: float
) -> Any:
    """Run a sync callable on a helper thread and wait at most ``timeout`` seconds.

    Python cannot stop a running function: at the deadline the record fails with
    StepTimeout, ``ctx.cancelled`` turns true for the callable (which keeps its own
    Context: the worker takes a fresh one) and whatever it returns later is discarded.
    """
    outcome: list[Any] = []
    done = threading.Event()

    def target() -> None:
        try:
            outcome.append((True, spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx)))
        except BaseException as exc:
            outcome.append((False, exc))
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"choreo-step-{ctx.step}", daemon=True)
    thread.start()
    if not done.wait(timeout):
        ctx.timed_out = True
        worker.renew_context(ctx)
        raise timed_out(ctx, spec, timeout)
    ok, value = outcome[0]
    if ok:
        return value
    raise value


# -- the async call path of a worker thread's serving task (see workers.ThreadPool) ----------


def ainvoke(
    spec: CallSpec,
    ctx: Context,
    value: Any,
    worker: Worker,
    planned: Planned | None,
    flags: _RunFlags,
) -> Awaitable[Any]:
    """``invoke`` for an async callable, for a record that runs in a task on its worker's
    loop: what to await. The callable's coroutine is awaited in place, not run as a task
    of its own: the same semantics, for one task and one run of the loop less per call
    (see workers.ThreadPool._serve_async)."""
    arg = converted(spec, ctx, value)
    if planned is None or (
        planned.timeout is None and (planned.retry is None or spec is not planned.job)
    ):
        return awaited(spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx), worker)
    if planned.retry is None or spec is not planned.job:
        return acall(spec, ctx, arg, worker, planned.timeout)
    return aretry(planned, ctx, arg, worker, flags)


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


async def acall(
    spec: CallSpec, ctx: Context, arg: Any, worker: Worker, timeout: float | None
) -> Any:
    """One attempt of an async callable, as ``call`` makes it."""
    coro = spec.fn(ctx, arg) if spec.takes_record else spec.fn(ctx)
    if timeout is None:
        return await awaited(coro, worker)
    import asyncio

    try:  # wait_for runs the coroutine as a task of its own
        result = await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        _settle(worker)
        ctx.timed_out = True
        raise timed_out(ctx, spec, timeout) from None
    except BaseException as exc:
        _raise_escaped(worker, exc)
    _settle(worker)
    return result


async def aretry(planned: Planned, ctx: Context, arg: Any, worker: Worker, flags: _RunFlags) -> Any:
    """``retry`` for an async job."""
    attempt = 0
    while True:
        attempt = count_attempt(planned, ctx, attempt)
        try:
            return await acall(planned.job, ctx, arg, worker, planned.timeout)
        except Cancel:
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
