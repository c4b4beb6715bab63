"""Reading and checking a test file: every problem positioned, the tests ready to run."""

from __future__ import annotations

import builtins
import copy
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from choreo_cli.errors import Cancel, Skip, StepDefinitionError, did_you_mean
from choreo_cli.pipeline.problems import Problem
from choreo_cli.testing.definitions import (
    MockDefinition,
    Phase,
    PipelineTest,
    PipelineTestFile,
    ResourceReplacement,
)

if TYPE_CHECKING:
    from choreo_cli.pipeline.definitions import Pipeline
    from choreo_cli.pipeline.yaml_loader import YamlDocument, YamlPath

_RAISE_HINT = (
    "name Skip, Cancel, a builtin exception (ValueError, ...) or a reference 'module:Class'"
)
_CHOREO_EXCEPTIONS: dict[str, type[BaseException]] = {"Skip": Skip, "Cancel": Cancel}
_MOCK_KINDS = ("returns", "raises", "call")


class TestFileReader:
    """One pass over one test file: ``read()`` returns the checked file (or None) and problems.

    The pipeline file is loaded (its code imported) and every reference of the test file
    resolved: call it inside ``isolated_imports()`` so that nothing leaks to the next file.
    The test file's folder is put at the front of ``sys.path`` (after the pipeline's
    ``python_path``), so a fakes.py beside it can be named.

    >>> test_file, problems = TestFileReader("pipeline.test.yaml").read()  # doctest: +SKIP
    """

    __test__ = False  # not a pytest class

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.file = os.fspath(path)
        self.path = Path(path)
        self.problems: list[Problem] = []
        self.doc: YamlDocument | None = None

    def problem(self, path: YamlPath, message: str, *, at_key: bool = False) -> None:
        assert self.doc is not None
        mark = self.doc.key_mark(path) if at_key else self.doc.value_mark(path)
        self.problems.append(Problem(self.file, mark.line, mark.column, message))

    def _at(self, path: YamlPath) -> tuple[int, int]:
        assert self.doc is not None
        mark = self.doc.value_mark(path)
        return mark.line, mark.column

    def read(self) -> tuple[PipelineTestFile | None, list[Problem]]:
        """Check the whole file; the file is None when it is too broken to run."""
        from choreo_cli.pipeline.schema import check_structure
        from choreo_cli.pipeline.yaml_loader import YamlLoadError, read_yaml_file

        try:
            self.doc = doc = read_yaml_file(self.path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            return None, [Problem(self.file, 1, 1, f"cannot read the file: {reason}")]
        except YamlLoadError as exc:
            return None, [Problem(self.file, exc.mark.line, exc.mark.column, exc.message)]
        for mark, message in doc.issues:
            self.problems.append(Problem(self.file, mark.line, mark.column, message))
        if doc.data is None:
            self.problem(
                (), "the file is empty — a test file needs 'version: 1', 'pipeline' and 'tests'"
            )
            return None, self.problems
        self.problems.extend(check_structure(doc, file=self.file, schema="test"))
        data = doc.data
        if not isinstance(data, dict) or not isinstance(data.get("pipeline"), str):
            return None, _in_order(self.problems)
        pipeline, clean = self._pipeline(data["pipeline"])
        if pipeline is None:
            return None, _in_order(self.problems)
        sys.path.insert(0, str(self.path.resolve().parent))
        tests = self._tests(data.get("tests"), pipeline)
        problems = _in_order(self.problems)
        if any(p.is_error for p in problems):
            return None, problems
        test_file = PipelineTestFile(
            path=self.file,
            pipeline_path=self.path.parent / data["pipeline"],
            pipeline=pipeline,
            tests=tuple(tests),
            document=doc,
            clean=clean,
        )
        return test_file, problems

    # -- the pipeline ---------------------------------------------------------------------

    def _pipeline(self, relative: str) -> tuple[Pipeline | None, bool]:
        """The pipeline under test, loaded as ``choreo run`` loads it (an unset ${VAR} is
        only a warning here: a test may set it); its errors are problems of this file."""
        from choreo_cli.pipeline.reader import PipelineReader

        path = self.path.parent / relative
        if not path.is_file():
            where = "" if Path(relative).is_absolute() else " (relative to this test file)"
            self.problem(("pipeline",), f"pipeline file '{relative}' not found{where}")
            return None, False
        reader = PipelineReader(path, import_code=True, strict=False)
        pipeline = reader.read()
        errors = [p for p in _in_order(reader.problems) if p.is_error]
        if errors:
            noun = "problem" if len(errors) == 1 else "problems"
            self.problem(
                ("pipeline",),
                f"the pipeline file '{relative}' does not load ({len(errors)} {noun}; "
                f"`choreo validate {os.fspath(path)}` lists them): {errors[0]}",
            )
            return None, False
        return pipeline, not reader.problems

    # -- tests ----------------------------------------------------------------------------

    def _tests(self, tests: Any, pipeline: Pipeline) -> list[PipelineTest]:
        if not isinstance(tests, list):
            return []
        seen: dict[str, int] = {}
        found = []
        for index, test in enumerate(tests):
            if not isinstance(test, dict):
                continue
            path: YamlPath = ("tests", index)
            name = test.get("name")
            if isinstance(name, str):
                assert self.doc is not None
                if name in seen:
                    self.problem(
                        (*path, "name"),
                        f"duplicate test name '{name}': the test at line {seen[name]} has it "
                        "already — test names must be unique in a file",
                    )
                else:
                    seen[name] = self.doc.value_mark((*path, "name")).line
            built = self._test(index, test, pipeline)
            if built is not None:
                found.append(built)
        return found

    def _test(self, index: int, test: dict[str, Any], pipeline: Pipeline) -> PipelineTest | None:
        assert self.doc is not None
        path: YamlPath = ("tests", index)
        resources = self._resources(test.get("resources"), pipeline, (*path, "resources"))
        mocks = self._mocks(test.get("mocks"), pipeline, (*path, "mocks"))
        data = self._input(test, path)
        name, expect, exit_code = test.get("name"), test.get("expect"), test.get("exit_code")
        values, env = test.get("set", {}), test.get("env", {})
        if (
            data is None
            or not isinstance(name, str)
            or not isinstance(expect, list)
            or not isinstance(values, dict)
            or not isinstance(env, dict)
        ):
            return None
        mark = self.doc.value_mark(path)
        return PipelineTest(
            index=index,
            name=name,
            line=mark.line,
            column=mark.column,
            values=values,
            env={str(k): v for k, v in env.items() if isinstance(v, str)},
            resources=tuple(resources),
            mocks=tuple(mocks),
            input=data,
            expect=tuple(expect),
            exit_code=exit_code if isinstance(exit_code, int) else None,
        )

    def _input(self, test: dict[str, Any], path: YamlPath) -> bytes | None:
        """The test's input as JSON Lines bytes: ``input`` records one per line, or
        ``input_lines`` as written."""
        from choreo_cli.jsonl.lines import dump_value

        has_records, has_lines = "input" in test, "input_lines" in test
        if has_records and has_lines:
            self.problem(
                (*path, "input_lines"),
                "give input: (records) or input_lines: (raw lines), not both",
                at_key=True,
            )
            return None
        if not has_records and not has_lines:
            self.problem(
                path, "the test has no input — add input: (records) or input_lines: (raw lines)"
            )
            return None
        if has_records:
            records = test["input"]
            if not isinstance(records, list):
                return None
            return b"".join(dump_value(record) + b"\n" for record in records)
        lines = test["input_lines"]
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            return None
        return "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")

    def _resources(
        self, resources: Any, pipeline: Pipeline, path: YamlPath
    ) -> list[ResourceReplacement]:
        if not isinstance(resources, dict):
            return []
        known = [r.name for r in pipeline.resources]
        found = []
        for name, spec in resources.items():
            where: YamlPath = (*path, name)
            if name not in known:
                hint = did_you_mean(name, known)
                listed = ", ".join(f"'{n}'" for n in known) or "none"
                self.problem(
                    where,
                    f"the pipeline has no resource '{name}'{hint or f' (it has: {listed})'}",
                    at_key=True,
                )
                continue
            if not isinstance(spec, dict):
                continue
            has_factory, has_value = "factory" in spec, "value" in spec
            if has_factory == has_value:
                self.problem(
                    where,
                    f"resource '{name}': give factory: (with its with:) or value:, "
                    + ("not both" if has_factory else "one of them"),
                )
                continue
            with_ = spec.get("with", {})
            if has_value:
                if "with" in spec:
                    self.problem(
                        (*where, "with"), "with: goes with factory:, not value:", at_key=True
                    )
                    continue
                found.append(
                    ResourceReplacement(name, None, {}, spec["value"], "value", *self._at(where))
                )
                continue
            reference = spec["factory"]
            if not isinstance(reference, str) or not isinstance(with_, dict):
                continue
            factory = self._resolve(reference, (*where, "factory"))
            if factory is None:
                continue
            if self._check_factory(name, reference, factory, with_, where):
                found.append(
                    ResourceReplacement(
                        name, factory, dict(with_), None, reference, *self._at((*where, "factory"))
                    )
                )
        return found

    def _check_factory(
        self,
        name: str,
        reference: str,
        factory: Any,
        with_: Mapping[str, Any],
        where: YamlPath,
    ) -> bool:
        label = f"resource '{name}': factory {reference}"
        if not callable(factory):
            kind = type(factory).__name__
            self.problem((*where, "factory"), f"{label} is not callable (it is a {kind})")
            return False
        try:
            params = list(inspect.signature(factory).parameters.values())
        except (TypeError, ValueError):
            return True  # a builtin without a signature: it is checked when it is called
        kinds = inspect.Parameter
        named = [
            p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        ]
        ok = True
        if not any(p.kind is kinds.VAR_KEYWORD for p in params):
            for key in with_:
                if key not in named:
                    self.problem(
                        (*where, "with", key),
                        f"{label} does not accept the keyword argument '{key}' given in "
                        f"with:{did_you_mean(key, named)}",
                        at_key=True,
                    )
                    ok = False
        for param in params:
            if param.default is not kinds.empty or param.kind in (
                kinds.VAR_POSITIONAL,
                kinds.VAR_KEYWORD,
            ):
                continue
            if param.name not in with_ or param.kind is kinds.POSITIONAL_ONLY:
                self.problem(
                    (*where, "factory"),
                    f"{label} requires the argument '{param.name}': add it under with:",
                )
                ok = False
        return ok

    def _mocks(self, mocks: Any, pipeline: Pipeline, path: YamlPath) -> list[MockDefinition]:
        if not isinstance(mocks, dict):
            return []
        steps = {step.name.casefold(): step.name for step in pipeline.steps}
        found = []
        for name, phases in mocks.items():
            where: YamlPath = (*path, name)
            step = steps.get(name.casefold())
            if step is None:
                names = list(steps.values())
                hint = did_you_mean(name, names)
                listed = ", ".join(f"'{n}'" for n in names)
                self.problem(
                    where,
                    f"the pipeline has no step '{name}'{hint or f' (its steps: {listed})'}",
                    at_key=True,
                )
                continue
            if not isinstance(phases, dict):
                continue
            for phase in ("precheck", "job"):
                spec = phases.get(phase)
                if isinstance(spec, dict):
                    mock = self._mock(step, phase, spec, (*where, phase))
                    if mock is not None:
                        found.append(mock)
        return found

    def _mock(
        self, step: str, phase: Phase, spec: dict[str, Any], where: YamlPath
    ) -> MockDefinition | None:
        kinds = [kind for kind in _MOCK_KINDS if kind in spec]
        if len(kinds) != 1:
            given = " and ".join(f"{k}:" for k in kinds)
            self.problem(
                where,
                f"step '{step}': a {phase} mock needs exactly one of returns:, raises: or call:"
                + (f" — it has {given}" if kinds else ""),
            )
            return None
        kind = kinds[0]
        misplaced = {"message": "raises", "data": "raises", "with": "call"}
        for key, owner in misplaced.items():
            if key in spec and kind != owner:
                self.problem(
                    (*where, key), f"{key}: goes with {owner}:, not with {kind}:", at_key=True
                )
                return None
        if kind == "returns":
            return MockDefinition(
                step, phase, _returning(spec["returns"]), {}, "mock (returns)", *self._at(where)
            )
        if kind == "raises":
            return self._raising(step, phase, spec, where)
        reference, with_ = spec["call"], spec.get("with", {})
        if not isinstance(reference, str) or not isinstance(with_, dict):
            return None
        target = self._resolve(reference, (*where, "call"))
        if target is None:
            return None
        from choreo_cli.core.signatures import inspect_callable

        try:
            inspect_callable(target, step=step, phase=phase, name=reference, kwargs=with_)
        except StepDefinitionError as exc:
            if exc.key is not None and exc.key in with_:
                self.problem((*where, "with", exc.key), str(exc), at_key=True)
            else:
                self.problem((*where, "call"), str(exc))
            return None
        return MockDefinition(
            step, phase, target, dict(with_), reference, *self._at((*where, "call"))
        )

    def _raising(
        self, step: str, phase: Phase, spec: dict[str, Any], where: YamlPath
    ) -> MockDefinition | None:
        name, message = spec["raises"], spec.get("message", "")
        if not isinstance(name, str) or not isinstance(message, str):
            return None
        exception = self._exception(name, (*where, "raises"))
        if exception is None:
            return None
        if "data" in spec and exception is not Skip:
            self.problem(
                (*where, "data"), f"data: goes with raises: Skip only, not {name}", at_key=True
            )
            return None
        try:
            exception(message)
        except Exception as exc:  # any refusal is the user's to see
            self.problem(
                (*where, "raises"),
                f"{name} cannot be raised with a message alone ({type(exc).__name__}: {exc}) "
                "— use call: with a function that raises it",
            )
            return None
        return MockDefinition(
            step,
            phase,
            _raiser(exception, message, spec.get("data")),
            {},
            f"mock (raises {name})",
            *self._at(where),
        )

    def _exception(self, name: str, where: YamlPath) -> type[BaseException] | None:
        found: Any = _CHOREO_EXCEPTIONS.get(name)
        if found is None and ":" not in name and "." not in name:
            found = getattr(builtins, name, None)
            if not (isinstance(found, type) and issubclass(found, BaseException)):
                names = [*_CHOREO_EXCEPTIONS, *_builtin_exceptions()]
                self.problem(
                    where, f"unknown exception '{name}'{did_you_mean(name, names)} — {_RAISE_HINT}"
                )
                return None
        elif found is None:
            found = self._resolve(name, where)
            if found is None:
                return None
            if not (isinstance(found, type) and issubclass(found, BaseException)):
                self.problem(where, f"'{name}' is not an exception class — {_RAISE_HINT}")
                return None
        if not issubclass(found, Exception) and found is not SystemExit:
            self.problem(
                where,
                f"raises: {name} would stop the whole test run, not the step — "
                "raise an Exception (Cancel cancels the record)",
            )
            return None
        exception: type[BaseException] = found
        return exception

    def _resolve(self, reference: str, where: YamlPath) -> Any:
        from choreo_cli.pipeline.refs import ReferenceResolutionError, resolve_reference

        try:
            return resolve_reference(reference)
        except ReferenceResolutionError as exc:
            self.problem(where, exc.message)
            return None


def _builtin_exceptions() -> list[str]:
    return [
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, Exception)
    ]


def _returning(value: Any) -> Callable[..., Any]:
    """A callable ``f(ctx)`` returning ``value`` (a fresh copy of a list or mapping each time,
    so that a step changing it changes no other record or test)."""
    if isinstance(value, (dict, list)):

        def returns_copy(ctx: Any) -> Any:
            return copy.deepcopy(value)

        return returns_copy

    def returns(ctx: Any) -> Any:
        return value

    return returns


def _raiser(exception: type[BaseException], message: str, data: Any) -> Callable[..., Any]:
    if exception is Skip:

        def skips(ctx: Any) -> Any:
            raise Skip(message, data=copy.deepcopy(data))

        return skips

    def raises(ctx: Any) -> Any:
        raise exception(message)

    return raises


def _in_order(problems: list[Problem]) -> list[Problem]:
    return sorted(dict.fromkeys(problems), key=lambda p: (p.file, p.line, p.column))
