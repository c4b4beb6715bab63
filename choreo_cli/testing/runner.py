"""Running the tests of a test file in-process, each with its own coordinator."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from choreo_cli.errors import PipelineError, ResourceError
from choreo_cli.testing.matching import MISSING, compare, path_text
from choreo_cli.testing.outcomes import FileOutcome, TestFailure, TestOutcome

if TYPE_CHECKING:
    from choreo_cli.core.coordinator import Coordinator
    from choreo_cli.core.result import Result
    from choreo_cli.pipeline.definitions import CallDefinition, Pipeline
    from choreo_cli.pipeline.yaml_loader import YamlPath
    from choreo_cli.testing.definitions import MockDefinition, PipelineTest, PipelineTestFile

# A short diff for nested values: at most this many lines.
_DIFF_LINES = 12


def run_test_file(
    path: str | os.PathLike[str],
    *,
    keyword: str | None = None,
    timeout: float | None = None,
) -> FileOutcome:
    """Check a test file and run its tests (those whose name contains ``keyword``).

    The file is handled as if alone: the modules it (and its pipeline) imported are
    forgotten afterwards and ``sys.path`` is restored. ``timeout`` bounds each test as a
    whole, in seconds.

    >>> outcome = run_test_file("pipeline.test.yaml")  # doctest: +SKIP
    >>> outcome.passed  # doctest: +SKIP
    True
    """
    from choreo_cli.pipeline.loader import isolated_imports
    from choreo_cli.testing.reader import TestFileReader

    with isolated_imports():
        test_file, problems = TestFileReader(path).read()
        if test_file is None:
            return FileOutcome(os.fspath(path), tuple(problems))
        runner = TestRunner(test_file, timeout=timeout)
        outcomes = tuple(
            runner.run(test) for test in test_file.tests if keyword is None or keyword in test.name
        )
    return FileOutcome(os.fspath(path), tuple(problems), outcomes)


class TestRunner:
    """Runs the tests of one checked test file; ``run(test)`` gives a test's outcome."""

    __test__ = False  # not a pytest class

    def __init__(self, test_file: PipelineTestFile, *, timeout: float | None = None) -> None:
        self.file = test_file
        self.timeout = timeout
        # Pipelines loaded for a test's environment and context values, by both.
        self._pipelines: dict[bytes, Pipeline] = {}

    def run(self, test: PipelineTest) -> TestOutcome:
        """Run one test; its failures are values, never exceptions. What it logs is kept
        in the outcome (``log``), not written anywhere."""
        started = time.perf_counter()
        with _captured_log() as log:
            if self.timeout is None:
                failures, results, exit_code = self._run(test, None)
            else:
                failures, results, exit_code = self._run_bounded(test, self.timeout)
        return TestOutcome(
            index=test.index,
            name=test.name,
            line=test.line,
            column=test.column,
            failures=tuple(failures),
            results=tuple(results),
            exit_code=exit_code,
            duration=time.perf_counter() - started,
            had_exit_code=test.exit_code is not None,
            log=tuple(log),
        )

    # -- one test -------------------------------------------------------------------------

    def _run_bounded(
        self, test: PipelineTest, timeout: float
    ) -> tuple[list[TestFailure], list[dict[str, Any]], int | None]:
        """``_run`` in a thread of its own, given up after ``timeout`` seconds: the test
        fails, its records are told to stop (``ctx.cancelled``), and the next test runs."""
        done: list[tuple[list[TestFailure], list[dict[str, Any]], int | None]] = []
        raised: list[BaseException] = []
        running: list[Coordinator] = []

        def target() -> None:
            try:
                done.append(self._run(test, running.append))
            except BaseException as exc:  # handed to the caller's thread
                raised.append(exc)

        thread = threading.Thread(target=target, name=f"choreo-test-{test.index}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            for coordinator in running:
                coordinator.interrupt(f"choreo test --timeout {timeout:g}")
            message = (
                f"test '{test.name}' did not finish within --timeout {timeout:g}s (its records "
                "were told to stop) — give its steps a timeout:, or raise --timeout"
            )
            return [self._error(test, message)], [], None
        if raised:
            raise raised[0]
        return done[0]

    def _run(
        self, test: PipelineTest, started: Callable[[Coordinator], None] | None
    ) -> tuple[list[TestFailure], list[dict[str, Any]], int | None]:
        from choreo_cli.core.summary import RunSummary
        from choreo_cli.jsonl.lines import LineEncoder
        from choreo_cli.jsonl.reader import iter_items

        try:
            pipeline = self._pipeline(test)
            coordinator = self._coordinator(pipeline, test)
        except PipelineError as exc:
            problems = "; ".join(str(p) for p in exc.problems) or str(exc)
            message = (
                f"the pipeline does not load with this test's environment and values — {problems}"
            )
            return [self._error(test, message)], [], None
        if started is not None:
            started(coordinator)
        try:
            coordinator.open()
        except ResourceError as exc:
            return [self._error(test, str(exc))], [], None
        summary = RunSummary(coordinator.plan.step_names)
        encoder = LineEncoder(include_input=True, include_data=True)
        results: list[Result] = []
        teardown: str | None = None
        items = iter_items(io.BytesIO(test.input), keep_raw=True)
        try:
            for result in _run_records(coordinator, items):
                counted: Any = result  # a Result is what the summary reads
                summary.add(counted)
                results.append(result)
        finally:
            try:
                coordinator.close()
            except ResourceError as exc:
                summary.record_teardown_failure()
                teardown = str(exc)
        summary.finish()
        exit_code = int(summary.exit_code)
        lines = [_decoded(encoder.encode(result)) for result in results]
        failures = self._compare(test, lines, exit_code)
        if teardown is not None and test.exit_code != exit_code:
            failures.append(self._error(test, f"a resource's teardown failed: {teardown}"))
        return failures, lines, exit_code

    def _pipeline(self, test: PipelineTest) -> Pipeline:
        """The pipeline as the test sees it: its environment and context values."""
        from choreo_cli.pipeline.loader import load_pipeline

        base = self.file.pipeline
        if not test.env and self.file.clean:
            if not test.values:
                return base
            return dataclasses.replace(base, values={**base.values, **test.values})
        from choreo_cli.jsonl.lines import dump_value

        key = dump_value([sorted(test.env.items()), test.values])
        pipeline = self._pipelines.get(key)
        if pipeline is None:
            environ = {**os.environ, **test.env}
            saved = list(sys.path)
            try:
                pipeline = load_pipeline(
                    self.file.pipeline_path, overrides=test.values, environ=environ
                )
            finally:
                sys.path[:] = saved
            self._pipelines[key] = pipeline
        return pipeline

    def _coordinator(self, pipeline: Pipeline, test: PipelineTest) -> Coordinator:
        """A coordinator of ``pipeline`` with the test's resources and mocks, one worker.

        The replacements are made in the pipeline's definitions, and the pipeline builds
        the coordinator as it does for ``choreo run``: whatever else the file defines
        comes along.
        """
        from choreo_cli.pipeline.definitions import CallDefinition

        file = self.file.path
        replaced = {r.name: r for r in test.resources}
        resources = []
        for resource in pipeline.resources:
            replacement = replaced.get(resource.name)
            if replacement is not None:
                factory = replacement.factory or _giving(replacement.value)
                call = CallDefinition(
                    replacement.label,
                    replacement.with_,
                    factory,
                    file,
                    replacement.line,
                    replacement.column,
                )
                resource = dataclasses.replace(resource, factory=call)
            resources.append(resource)
        mocks = {(m.step.casefold(), m.phase): m for m in test.mocks}
        steps = []
        for step in pipeline.steps:
            key = step.name.casefold()
            job, precheck = mocks.get((key, "job")), mocks.get((key, "precheck"))
            if job is not None:
                step = dataclasses.replace(step, job=_mock_call(job, file))
            if precheck is not None:
                step = dataclasses.replace(step, precheck=_mock_call(precheck, file))
            steps.append(step)
        # Without its limits: they protect what a run writes to, which a test replaces, and a
        # rate of 1/min would make a test of a few records take minutes.
        mocked = dataclasses.replace(
            pipeline, resources=tuple(resources), steps=tuple(steps), limits=()
        )
        return mocked.coordinator(workers=1, timings=False)

    # -- matching -------------------------------------------------------------------------

    def _compare(
        self, test: PipelineTest, lines: list[dict[str, Any]], exit_code: int
    ) -> list[TestFailure]:
        failures: list[TestFailure] = []
        base: YamlPath = (*test.path, "expect")
        for record, (expected, actual) in enumerate(zip(test.expect, lines, strict=False)):
            for difference in compare(expected, actual):
                where = self.file.document.value_mark((*base, record, *difference.path))
                shown = path_text(difference.path)
                has_actual = difference.actual is not MISSING
                actual_value = difference.actual if has_actual else None
                if has_actual:
                    said = f"expected {_short(difference.expected)}, got {_short(actual_value)}"
                else:
                    said = f"expected {_short(difference.expected)}, but the result has no '{difference.path[-1]}'"
                prefix = f"{shown}: " if shown else ""
                failures.append(
                    TestFailure(
                        line=where.line,
                        column=where.column,
                        kind="mismatch",
                        message=f"test '{test.name}', record {record}: {prefix}{said}",
                        record=record,
                        path=shown,
                        expected=difference.expected,
                        actual=actual_value,
                        has_actual=has_actual,
                        diff=_diff(difference.expected, actual_value) if has_actual else (),
                    )
                )
        if len(test.expect) != len(lines):
            where = self.file.document.key_mark(base)
            failures.append(
                TestFailure(
                    line=where.line,
                    column=where.column,
                    kind="mismatch",
                    message=(
                        f"test '{test.name}': expected {_records(len(test.expect))}, "
                        f"got {_records(len(lines))} (one expect: entry per input record)"
                    ),
                    path="expect",
                    expected=len(test.expect),
                    actual=len(lines),
                )
            )
        if test.exit_code is not None and test.exit_code != exit_code:
            where = self.file.document.value_mark((*test.path, "exit_code"))
            failures.append(
                TestFailure(
                    line=where.line,
                    column=where.column,
                    kind="mismatch",
                    message=(
                        f"test '{test.name}': exit_code: expected {test.exit_code}, "
                        f"`choreo run` would exit {exit_code}"
                    ),
                    path="exit_code",
                    expected=test.exit_code,
                    actual=exit_code,
                )
            )
        return failures

    def _error(self, test: PipelineTest, message: str) -> TestFailure:
        return TestFailure(line=test.line, column=test.column, kind="error", message=message)


def _run_records(coordinator: Coordinator, items: Iterable[Any]) -> Iterator[Result]:
    """The Result of each item, in order, on the calling thread.

    A test has a few records and a coordinator of its own: compiling the coordinator's
    runner (generated code) would cost more than the records. The reference runner that
    the compiled one is tested against gives the same Results without it; a plan with a
    ``timeout:`` or an ``async def`` callable takes the coordinator's own way, which
    watches deadlines and runs event loops.
    """
    plan = coordinator.plan
    if plan.has_timeout or plan.has_async:
        return coordinator.run_many(items)
    from choreo_cli.core.interpreted import build_runner

    run_serial = build_runner(plan)[1]
    return run_serial(items, coordinator.local_worker())


def _mock_call(mock: MockDefinition, file: str) -> CallDefinition:
    from choreo_cli.pipeline.definitions import CallDefinition

    return CallDefinition(mock.label, mock.with_, mock.call, file, mock.line, mock.column)


def _giving(value: Any) -> Callable[[], Any]:
    """A resource factory giving a fresh copy of ``value`` (a resource given as it is)."""

    def give() -> Any:
        return copy.deepcopy(value)

    return give


def _decoded(line: bytes) -> dict[str, Any]:
    import orjson

    value: dict[str, Any] = orjson.loads(line)
    return value


def _records(count: int) -> str:
    return f"{count} record" if count == 1 else f"{count} records"


def _json(value: Any, *, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=repr)


def _short(value: Any, limit: int = 120) -> str:
    text = _json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _diff(expected: Any, actual: Any) -> tuple[str, ...]:
    """A short unified diff of two nested values as indented JSON; empty for scalars."""
    if not isinstance(expected, (dict, list)) and not isinstance(actual, (dict, list)):
        return ()
    import difflib

    lines = list(
        difflib.unified_diff(
            _json(expected, indent=2).splitlines(),
            _json(actual, indent=2).splitlines(),
            "expected",
            "actual",
            n=1,
            lineterm="",
        )
    )
    if len(lines) > _DIFF_LINES + 2:
        lines = [*lines[: _DIFF_LINES + 2], f"... ({len(lines) - _DIFF_LINES - 2} more lines)"]
    return tuple(lines)


class _LogLines(logging.Handler):
    """Keeps each record as one ``LEVEL logger: message`` line (a traceback's first line)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception as exc:  # a step's bad format string: say so, do not fail the test
            message = f"{record.msg!r} (cannot format: {exc!r})"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            message += f" [{type(error).__name__}: {error}]"
        self.lines.append(f"{record.levelname} {record.name}: {message}")


@contextlib.contextmanager
def _captured_log() -> Iterator[list[str]]:
    """The ``choreo`` loggers' records (steps log to ``choreo.step.<step>``) of the block,
    as lines, instead of Python's last-resort output on stderr."""
    logger = logging.getLogger("choreo")
    lines: list[str] = []
    handler = _LogLines(lines)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
