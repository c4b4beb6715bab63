"""Results across a process boundary: a compact picklable form, and the Result rebuilt from it.

A worker sends, per record, only what the parent cannot know: the data bag, the status
and errors, where the run stopped. Index, line, input and raw bytes stay in the parent
with the item it sent. Exceptions travel as (module, type name, message) and come back
as a stand-in class of the same name, so a result line shows the original type.

Results travel in chunks (``Chunk``): the results of consecutive records of a batch.
A record that ran every step without an error (the common case) costs only its bag's
two maps in two columns; every other record travels whole (``export_result``).

This module mirrors a few private fields of Result and DataBag (the compact form the
hot loop writes); tests/unit/test_executors.py round-trips every kind of result.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from itertools import repeat
from typing import Any

from choreo_cli.core.context import DataBag
from choreo_cli.core.items import Record
from choreo_cli.core.result import (
    ExecutionError,
    Result,
    SkipPattern,
    clean_result_type,
    exception_message,
)
from choreo_cli.errors import (
    Cancel,
    Interrupted,
    JobFailed,
    Skip,
    StepTimeout,
    UnassignableInput,
)

_new = object.__new__
_PROTOCOL = pickle.HIGHEST_PROTOCOL
# choreo's own exceptions come back as themselves, so raise_for_status() keeps its meaning.
_KNOWN: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (Skip, Cancel, Interrupted, UnassignableInput, JobFailed, StepTimeout)
}
_ERRORS_MODULE = "choreo_cli.errors"

# A portable exception: (module, type name, message).
PortableError = tuple[str, str, str]

# The results of ``count`` consecutive records sent in a batch: (count, jobs, pres, others).
# ``jobs`` and ``pres`` hold each record's bag maps (``DataBag._job``, ``DataBag._pre``), or
# are None when every one is None. ``others`` lists (offset in the chunk, export_result
# payload) for each record that is not plainly clean (its column entries are then None);
# in run_lines a succeeded record with skipped jobs is (its line, its SkipPattern) instead.
Chunk = tuple[int, "list[Any] | None", "list[Any] | None", "list[tuple[int, tuple[Any, ...]]]"]


class RemoteError(Exception):
    """An exception raised in another process, rebuilt by type name and message.

    ``type(exc).__name__`` is the original type's name; ``remote_module`` its module.
    """

    remote_module = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild_exception, ((self.remote_module, type(self).__name__, self.message),))


_standins: dict[tuple[str, str], type[RemoteError]] = {}


def export_exception(exc: BaseException) -> PortableError:
    """``exc`` as (module, type name, message).

    A subclass of Skip or Cancel has ``Skip:`` or ``Cancel:`` before its module, so that
    its stand-in is one too (the summary tells a precheck's Skip from its errors by it).
    """
    cls = type(exc)
    if isinstance(exc, RemoteError):
        return (exc.remote_module, cls.__name__, exc.message)
    module = cls.__module__
    if isinstance(exc, (Skip, Cancel)) and cls is not Skip and cls is not Cancel:
        module = f"{'Skip' if isinstance(exc, Skip) else 'Cancel'}:{module}"
    # The message the writer makes when the exception itself reaches it (threads).
    return (module, cls.__name__, exception_message(exc))


def rebuild_exception(portable: PortableError) -> BaseException:
    """An exception of the same type name and message as the one exported."""
    module, name, message = portable
    if module == _ERRORS_MODULE and name in _KNOWN:
        return _KNOWN[name](message)
    key = (module, name)
    cls = _standins.get(key)
    if cls is None:
        cls = _standins[key] = _standin_class(module, name)
    return cls(message)


def _standin_class(module: str, name: str) -> type[RemoteError]:
    bases: tuple[type, ...] = (RemoteError,)
    if module.startswith(("Skip:", "Cancel:")):
        bases = (RemoteError, Skip if module.startswith("Skip:") else Cancel)
    elif module == "builtins":
        import builtins

        original = getattr(builtins, name, None)
        if isinstance(original, type) and issubclass(original, Exception):
            # ``except ValueError`` still catches a ValueError raised in a worker.
            bases = (RemoteError, original)
    namespace = {"remote_module": module, "__module__": __name__, "__qualname__": name}
    try:
        return type(name, bases, namespace)
    except TypeError:  # an instance lay-out conflict with the builtin base
        return type(name, (RemoteError,), namespace)


# -- the worker's side -------------------------------------------------------------------


def export_result(result: Result, step_count: int) -> tuple[Any, ...]:
    """The portable form of one Result (without index, line, input and raw)."""
    bag = result.bag
    job, pre, names = bag._job, bag._pre, bag._names
    if names is not None and len(names) == step_count:
        names = None  # the steps' own names: the parent knows them
    if type(result) is not Result:  # the clean-result class: nothing else varies
        return (result.duration, job, pre, names)
    error = result.error
    errors = result._errors
    return (
        result.duration,
        job,
        pre,
        names,
        result.status,
        None if error is None else _export_error(error),
        None if errors is None else [_export_error(e) for e in errors],
        result._stop,
        result._outcome,
        result._skipped,
        result.attempts or None,
        result._would,
    )


class ChunkWriter:
    """Collects a worker's Results into a ``Chunk`` (the worker's per-record path, kept tight).

    >>> writer = ChunkWriter(step_count=1)  # doctest: +SKIP
    >>> writer.add(result); chunk = writer.take()  # doctest: +SKIP
    """

    __slots__ = ("jobs", "maps", "others", "pres", "step_count")

    def __init__(self, step_count: int, *, maps: bool = True) -> None:
        self.step_count = step_count
        # False: a clean record's bag is not sent (run_lines writes its line from two numbers).
        self.maps = maps
        self.jobs: list[Any] = []
        self.pres: list[Any] = []
        self.others: list[tuple[int, tuple[Any, ...]]] = []

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, result: Result) -> None:
        """Add the next record's Result."""
        if result.clean and result.duration is None:
            if not self.maps:
                self.jobs.append(None)
                self.pres.append(None)
                return
            bag = result.bag
            names = bag._names
            if names is None or len(names) == self.step_count:  # the steps' own names
                self.jobs.append(bag._job)
                self.pres.append(bag._pre)
                return
        self.others.append((len(self.jobs), export_result(result, self.step_count)))
        self.jobs.append(None)
        self.pres.append(None)

    def last_kept(self) -> tuple[Any, ...] | None:
        """The results of the record added last, unless its count alone tells them (it ran
        clean with an empty bag): ``(payload,)`` for one that is not clean (see
        ``export_result``), else ``(job map, precheck map)`` of its bag."""
        others = self.others
        if others and others[-1][0] == len(self.jobs) - 1:
            return (others[-1][1],)
        job = self.jobs[-1]
        pre = self.pres[-1]
        if job is None and pre is None:
            return None
        return (job, pre)

    def take(self) -> Chunk:
        """The chunk of the Results added since the last ``take()``; start a new one."""
        jobs, pres, others = self.jobs, self.pres, self.others
        self.jobs, self.pres, self.others = [], [], []
        count = len(jobs)
        return (
            count,
            None if jobs.count(None) == count else jobs,
            None if pres.count(None) == count else pres,
            others,
        )


def encode_chunk(chunk: Chunk, *head: Any) -> bytes:
    """Pickle ``(*head, chunk)``; a bag value that does not pickle becomes its repr."""
    try:
        return pickle.dumps((*head, chunk), protocol=_PROTOCOL)
    except Exception:
        return pickle.dumps((*head, _sanitized_chunk(chunk)), protocol=_PROTOCOL)


def encode_entry(entry: tuple[Any, ...]) -> bytes:
    """Pickle ``entry``: one record's results as ``ChunkWriter.last_kept`` gives them, or a
    Chunk; a bag value that does not pickle becomes its repr."""
    try:
        return pickle.dumps(entry, protocol=_PROTOCOL)
    except Exception:
        if len(entry) == 1:
            entry = (_sanitized(entry[0]),)
        elif len(entry) == 2:
            entry = (_sanitized_map(entry[0]), _sanitized_map(entry[1]))
        else:
            entry = _sanitized_chunk(entry)
        return pickle.dumps(entry, protocol=_PROTOCOL)


def _sanitized_chunk(chunk: Chunk) -> Chunk:
    count, jobs, pres, others = chunk
    return (
        count,
        None if jobs is None else [_sanitized_map(m) for m in jobs],
        None if pres is None else [_sanitized_map(m) for m in pres],
        [(k, _sanitized(p)) for k, p in others],
    )


def _sanitized_map(values: dict[str, Any] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    try:
        pickle.dumps(values, protocol=_PROTOCOL)
    except Exception:
        return {k: _portable_value(v) for k, v in values.items()}
    return values


def _export_error(error: ExecutionError) -> tuple[Any, ...]:
    return (error.step, error.phase, export_exception(error.exception))


def _sanitized(payload: tuple[Any, ...]) -> tuple[Any, ...]:
    try:
        pickle.dumps(payload, protocol=_PROTOCOL)
    except Exception:
        return (payload[0], _sanitized_map(payload[1]), _sanitized_map(payload[2]), *payload[3:])
    return payload


def _portable_value(value: Any) -> Any:
    try:
        # A value that pickles but does not unpickle would fail the whole chunk in the parent.
        pickle.loads(pickle.dumps(value, protocol=_PROTOCOL))
    except Exception:
        from choreo_cli.jsonl.lines import dump_value
        from choreo_cli.jsonl.numbers import loads_exact

        # What the writer would show for it: JSON as is (integers past 64 bits too),
        # anything else as its repr.
        try:
            return loads_exact(dump_value(value))
        except Exception:
            return repr(value)
    return value


# -- the parent's side ----------------------------------------------------------------------


class ResultBuilder:
    """Rebuilds Results in the parent from portable forms, for one pipeline's steps."""

    def __init__(self, names: tuple[str, ...], *, dry_run: bool = False) -> None:
        self._names = names
        self._folded = {name.casefold(): name for name in names}
        self._clean = clean_result_type(names, would_run=dry_run)
        self._would = dry_run
        self._skipped: dict[SkipPattern, Result] = {}

    def skipped(self, pattern: SkipPattern) -> Result:
        """A Result standing for every succeeded record of ``pattern`` (the steps whose
        jobs a precheck skipped with Skip): no index, line or messages, what the summary
        counts.

        >>> ResultBuilder(("a", "b")).skipped(0b10).steps
        {'a': 'succeeded', 'b': 'skipped'}
        """
        result = self._skipped.get(pattern)
        if result is None:
            names = self._names
            steps = tuple([name for i, name in enumerate(names) if pattern >> i & 1])
            result = Result.skipped_pattern(steps, names=names, would_run=self._would)
            self._skipped[pattern] = result
        return result

    def build_chunk(
        self,
        results: list[Result | None],
        chunk: Chunk,
        items: Sequence[Any],
        positions: Sequence[int],
        first: int,
        start: int,
    ) -> None:
        """Rebuild ``chunk`` into ``results``: its k-th is the item at ``positions[first + k]``.

        The per-record path of the parent, kept tight: a clean result is an object with
        its fields stored, no call. ``positions`` may be a range (every item was sent).
        """
        count, jobs, pres, others = chunk
        folded = self._folded
        clean = self._clean
        new = _new
        new_bag = DataBag
        record = Record
        end = first + count
        for pos, job, pre in zip(
            positions[first:end],
            repeat(None) if jobs is None else jobs,
            repeat(None) if pres is None else pres,
            strict=False,  # a column of None is an endless repeat
        ):
            item = items[pos]
            if type(item) is record:
                index = item.index
                result: Result = new(clean)
                result.index = start + pos if index is None else index
                result.line = item.line
                result.input = item.value
                result.raw = item.raw
            else:
                result = new(clean)
                result.index = start + pos
                result.line = None
                result.input = item
                result.raw = None
            bag = new(new_bag)
            bag._job = job
            bag._pre = pre
            bag._names = folded
            result.bag = bag
            result.duration = None
            results[pos] = result
        for k, payload in others:
            pos = positions[first + k]
            item = items[pos]
            if type(item) is Record:
                index = start + pos if item.index is None else item.index
                results[pos] = self.build(payload, index, item.line, item.value, item.raw)
            else:
                results[pos] = self.build(payload, start + pos, None, item, None)

    def build(
        self, payload: tuple[Any, ...], index: int, line: int | None, value: Any, raw: bytes | None
    ) -> Result:
        """The Result for ``payload``, with the item's own index, line, input and raw bytes."""
        bag = _new(DataBag)
        bag._job = payload[1]
        bag._pre = payload[2]
        names = payload[3]
        bag._names = self._folded if names is None else names
        if len(payload) == 4:
            result: Result = _new(self._clean)
            result.index = index
            result.line = line
            result.input = value
            result.raw = raw
            result.bag = bag
            result.duration = payload[0]
            return result
        (duration, _, _, _, status, error, errors, stop, outcome, skipped, attempts, would) = (
            payload
        )
        return Result(
            index=index,
            line=line,
            input=value,
            status=status,
            error=None if error is None else _rebuild_error(error),
            errors=None if errors is None else [_rebuild_error(e) for e in errors],
            bag=bag,
            duration=duration,
            names=self._names,
            stop=stop,
            outcome=outcome,
            skipped=skipped,
            attempts=attempts,
            raw=raw,
            would_run=would,
        )


def _rebuild_error(portable: tuple[Any, ...]) -> ExecutionError:
    step, phase, exc = portable
    return ExecutionError(step, phase, rebuild_exception(exc))
