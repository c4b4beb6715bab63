"""Reads a pipeline file into definitions, collecting every problem with its position."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from choreo_cli.core.retry import RetryPolicy, refused_exception
from choreo_cli.errors import StepDefinitionError, did_you_mean
from choreo_cli.pipeline.problems import Problem, Severity
from choreo_cli.pipeline.refs import ReferenceResolutionError, parse_reference, resolve_reference
from choreo_cli.pipeline.retry import build_retry_policy, resolve_exception

if TYPE_CHECKING:
    from choreo_cli.core.budget import FailureBudget
    from choreo_cli.pipeline.definitions import (
        CallDefinition,
        Pipeline,
        ResourceDefinition,
        StepDefinition,
    )
    from choreo_cli.pipeline.limits import LimitDefinition
    from choreo_cli.pipeline.yaml_loader import Mark, YamlDocument, YamlPath

# A percentage as the schema lets it through (its value is checked here).
_PERCENT_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)?%")


def _count(value: Any, least: int) -> int | None:
    """``value`` when it is a whole number (not true/false) of at least ``least``, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= least:
        return value
    return None


class PipelineReader:
    """One pass over one pipeline file: ``read()`` returns the pipeline (or None) and problems.

    ``strict`` makes an unset ``${VAR}`` an error instead of a warning; ``import_code=False``
    imports no user code (references are checked for syntax only).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        import_code: bool,
        strict: bool,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        interpolate: bool = True,
    ) -> None:
        self.path = Path(path)
        self.interpolate = interpolate
        self.file = os.fspath(path)
        self.import_code = import_code
        self.strict = strict
        self.overrides = dict(overrides or {})
        self.environ = os.environ if environ is None else environ
        self.problems: list[Problem] = []
        self.doc: YamlDocument | None = None
        self.python_path: list[Path] = []
        self.checked_modules: set[str] = set()
        self.limits: dict[str, LimitDefinition] = {}
        self.limits_given = False

    # -- problems -------------------------------------------------------------------------

    def problem(
        self, path: YamlPath, message: str, *, at_key: bool = False, warning: bool = False
    ) -> None:
        assert self.doc is not None
        mark = self.doc.key_mark(path) if at_key else self.doc.value_mark(path)
        severity: Severity = "warning" if warning else "error"
        self.problems.append(Problem(self.file, mark.line, mark.column, message, severity))

    # -- the pass -------------------------------------------------------------------------

    def read(self) -> Pipeline | None:
        """Check the whole file; the pipeline is None when it is too broken to describe."""
        from choreo_cli.pipeline.schema import check_structure
        from choreo_cli.pipeline.yaml_loader import YamlLoadError, read_yaml_file

        try:
            self.doc = read_yaml_file(self.path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.problems.append(Problem(self.file, 1, 1, f"cannot read the file: {reason}"))
            return None
        except YamlLoadError as exc:
            self.problems.append(Problem(self.file, exc.mark.line, exc.mark.column, exc.message))
            return None
        doc = self.doc
        for mark, message in doc.issues:
            self.problems.append(Problem(self.file, mark.line, mark.column, message))
        if doc.data is None:
            self.problem(
                (), "the file is empty — a pipeline needs at least 'version: 1' and 'steps'"
            )
            return None
        self.problems.extend(check_structure(doc, file=self.file))
        data = doc.data
        if not isinstance(data, dict):
            return None
        self._add_python_path(data.get("python_path"))
        values = self._context(data.get("context"))
        resources = self._resources(data.get("resources"))
        self._read_limits(data)
        steps = self._steps(data.get("steps"), data.get("defaults"))
        return self._pipeline(data, values, resources, steps)

    def _read_limits(self, data: dict[str, Any]) -> None:
        """The file's ``limits:``; with ``workers:`` above 1, a share below 1 per worker
        (the process and dask executors) is a warning at the limit."""
        from choreo_cli.pipeline.limits import read_limits

        self.limits_given = isinstance(data.get("limits"), dict)
        self.limits = read_limits(data.get("limits"), lambda path: self._value_mark(path).line)
        workers = _count(data.get("workers"), 1) or 1
        for name, limit in self.limits.items():
            warning = limit.share_warning(workers)
            if warning is not None:
                self.problem(("limits", name), warning, warning=True)

    def _limit_names(self, value: Any, path: YamlPath) -> tuple[str, ...]:
        """The limits a ``limit:`` names; an unknown name is a problem at its position."""
        from choreo_cli.pipeline.limits import check_names

        def report(at: YamlPath, message: str, warning: bool) -> None:
            self.problem(at, message, warning=warning)

        return check_names(value, path, self.limits, self.limits_given, report)

    def _pipeline(
        self,
        data: dict[str, Any],
        values: dict[str, Any],
        resources: list[ResourceDefinition],
        steps: list[StepDefinition],
    ) -> Pipeline:
        from choreo_cli.pipeline.definitions import Pipeline

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        workers = _count(data.get("workers"), 1) or 1
        max_workers = _count(data.get("max_workers"), 1)
        max_workers_at = None
        if max_workers is not None:
            mark = self._value_mark(("max_workers",))
            max_workers_at = Problem(self.file, mark.line, mark.column, "max_workers")
            if workers > max_workers:
                self.problem(
                    ("workers",),
                    f"workers: {workers} is more than max_workers: {max_workers} (line "
                    f"{mark.line}) — give workers: {max_workers} or fewer",
                )
        return Pipeline(
            path=self.path,
            name=text("name"),
            description=text("description"),
            workers=workers,
            limits=tuple(self.limits.values()),
            python_path=tuple(self.python_path),
            values=values,
            steps=tuple(steps),
            resources=tuple(resources),
            warnings=tuple(p for p in self.problems if not p.is_error),
            max_workers=max_workers,
            max_workers_at=max_workers_at,
            halt=self._halt(data.get("halt")),
            # Another value is the schema's problem (at its position).
            precheck_errors="fail" if data.get("precheck_errors") == "fail" else "skip",
        )

    def _value_mark(self, path: YamlPath) -> Mark:
        """Where the value at ``path`` is written."""
        assert self.doc is not None
        return self.doc.value_mark(path)

    def _halt(self, halt: Any) -> FailureBudget | None:
        """The failure budget of ``halt:``; what the schema cannot check (a percentage
        above 100% or of 0%) is a problem here. None without a usable ``halt:``."""
        from choreo_cli.core.budget import FailureBudget, parse_failures

        if not isinstance(halt, dict):
            return None
        budget = FailureBudget()
        failures = halt.get("failures")
        if failures is not None:
            try:
                count, percent = parse_failures(failures)
            except ValueError as exc:
                # Other wrong values are the schema's problems (said once, there).
                if isinstance(failures, str) and _PERCENT_TEXT.fullmatch(failures):
                    self.problem(("halt", "failures"), f"'failures': {exc}")
            else:
                budget = FailureBudget(failures=count, percent=percent)
        consecutive = _count(halt.get("consecutive"), 1)
        if consecutive is not None:
            budget = budget.with_consecutive(consecutive)
        min_records = _count(halt.get("min_records"), 0)
        if min_records is not None:
            budget = dataclasses.replace(budget, min_records=min_records)
        return budget if budget.active else None

    # -- top-level parts ------------------------------------------------------------------

    def _add_python_path(self, entries: Any) -> None:
        base = self.path.parent
        dirs = entries if isinstance(entries, list) else ["."]
        for index, entry in enumerate(dirs):
            if not isinstance(entry, str):
                continue
            directory = (base / entry).resolve()
            if entries is not None and not directory.is_dir():
                self.problem(
                    ("python_path", index), _python_path_warning(entry, directory), warning=True
                )
            self.python_path.append(directory)
        if self.import_code:
            for directory in reversed(self.python_path):
                sys.path.insert(0, str(directory))
            importlib.invalidate_caches()  # files written since the last import are seen

    def _interpolate(self, value: Any, path: YamlPath) -> Any:
        from choreo_cli.pipeline.interpolate import interpolate

        if not self.interpolate:
            return dict(value)
        result, issues = interpolate(value, self.environ)
        for issue in issues:
            warning = issue.kind == "unset" and not self.strict
            self.problem(path + issue.path, issue.message, warning=warning)
        return result

    def _context(self, context: Any) -> dict[str, Any]:
        """Context values after interpolation; an overridden value is not interpolated at all."""
        context = context if isinstance(context, dict) else {}
        kept = {key: value for key, value in context.items() if key not in self.overrides}
        expanded = self._interpolate(kept, ("context",))
        values = {key: self.overrides.get(key, expanded.get(key)) for key in context}
        values.update(self.overrides)
        return values

    def _resources(self, resources: Any) -> list[ResourceDefinition]:
        from choreo_cli.pipeline.definitions import ResourceDefinition

        if not isinstance(resources, dict):
            return []
        found = []
        for name, spec in resources.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("factory"), str):
                continue
            path: YamlPath = ("resources", name)
            with_ = spec.get("with")
            kwargs = self._interpolate(with_, (*path, "with")) if isinstance(with_, dict) else {}
            factory = self._call(spec["factory"], kwargs, (*path, "factory"))
            if factory.target is not None:
                self._check_factory(name, factory, path)
            scope = spec.get("scope", "pipeline")
            found.append(
                ResourceDefinition(
                    name, factory, scope if scope in ("pipeline", "worker") else "pipeline"
                )
            )
        return found

    def _check_factory(self, name: str, factory: CallDefinition, path: YamlPath) -> None:
        label = f"resource '{name}': factory {factory.reference}"
        if not callable(factory.target):
            kind = type(factory.target).__name__
            self.problem((*path, "factory"), f"{label} is not callable (it is a {kind})")
            return
        try:
            params = list(inspect.signature(factory.target).parameters.values())
        except (TypeError, ValueError):
            return  # a builtin without a signature: it is checked when it is called
        kinds = inspect.Parameter
        if any(p.kind is kinds.VAR_KEYWORD for p in params):
            named = {p.name for p in params if p.kind is not kinds.POSITIONAL_ONLY}
            unknown: list[str] = []
        else:
            named = {
                p.name
                for p in params
                if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
            }
            unknown = [key for key in factory.with_ if key not in named]
        for key in unknown:
            hint = did_you_mean(key, sorted(named))
            self.problem(
                (*path, "with", key),
                f"{label} does not accept the keyword argument '{key}' given in with:{hint}",
                at_key=True,
            )
        for param in params:
            if param.default is not kinds.empty or param.kind in (
                kinds.VAR_POSITIONAL,
                kinds.VAR_KEYWORD,
            ):
                continue
            if param.name not in factory.with_ or param.kind is kinds.POSITIONAL_ONLY:
                self.problem(
                    (*path, "factory"),
                    f"{label} requires the argument '{param.name}': add it under the resource's with:",
                )

    def _call(self, reference: str, with_: Mapping[str, Any], path: YamlPath) -> CallDefinition:
        """Resolve one reference (when importing code), keeping where it was written."""
        from choreo_cli.pipeline.definitions import CallDefinition

        assert self.doc is not None
        mark = self.doc.value_mark(path)
        target: Any = None
        if self.import_code and _well_formed(reference):
            self._evict_shadowing(reference)
            try:
                target = resolve_reference(reference)
            except ReferenceResolutionError as exc:
                self.problem(path, exc.message)
        return CallDefinition(reference, dict(with_), target, self.file, mark.line, mark.column)

    def _evict_shadowing(self, reference: str) -> None:
        """Forget a module another pipeline imported when this one has its own of that name.

        Two pipelines loaded in one process may each have a steps.py beside them: the
        second must get its own, not the first one's from sys.modules.
        """
        top = reference.split(":")[0].split(".")[0]
        existing = sys.modules.get(top)
        origin = getattr(existing, "__file__", None)
        if existing is None or origin is None or top in self.checked_modules:
            return
        self.checked_modules.add(top)
        origin_path = Path(origin).resolve()
        for directory in self.python_path:
            own = [directory / f"{top}.py", directory / top / "__init__.py"]
            found = next((f for f in own if f.is_file()), None)
            if found is not None:
                if found.resolve() != origin_path:
                    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
                        del sys.modules[name]
                return

    # -- steps ----------------------------------------------------------------------------

    def _steps(self, steps: Any, defaults: Any) -> list[StepDefinition]:
        from choreo_cli.pipeline.definitions import StepDefinition

        if not isinstance(steps, list):
            return []
        defaults = defaults if isinstance(defaults, dict) else {}
        default_retry = self._retry(defaults.get("retry"), ("defaults", "retry"))
        default_timeout = _number(defaults.get("timeout"))
        seen: dict[str, tuple[str, int]] = {}
        found = []
        for index, step in enumerate(steps):
            if not isinstance(step, dict):
                continue
            path: YamlPath = ("steps", index)
            name = step.get("name")
            if isinstance(name, str) and name:
                key = name.casefold()
                if key in seen:
                    first, line = seen[key]
                    self.problem(
                        (*path, "name"),
                        f"duplicate step name '{name}': '{first}' at line {line} has it already — "
                        "step names must be unique, ignoring case",
                    )
                else:
                    assert self.doc is not None
                    seen[key] = (name, self.doc.value_mark((*path, "name")).line)
            label = name if isinstance(name, str) else f"step {index + 1}"
            precheck = self._step_call(step.get("precheck"), label, "precheck", (*path, "precheck"))
            job = self._step_call(step.get("job"), label, "job", (*path, "job"))
            retry = (
                self._retry(step["retry"], (*path, "retry")) if "retry" in step else default_retry
            )
            retry_spec = step["retry"] if "retry" in step else defaults.get("retry")
            timeout = _number(step["timeout"]) if "timeout" in step else default_timeout
            description = step.get("description")
            job_limits = self._limit_names(step.get("limit"), (*path, "limit"))
            precheck_limits: tuple[str, ...] = ()
            for phase in ("precheck", "job"):
                call = step.get(phase)
                if isinstance(call, dict) and "limit" in call:
                    own = self._limit_names(call["limit"], (*path, phase, "limit"))
                    if phase == "job":
                        job_limits = (*job_limits, *own)
                    else:
                        precheck_limits = own
            if job is not None and isinstance(name, str):
                found.append(
                    StepDefinition(
                        name=name,
                        job=job,
                        precheck=precheck,
                        retry=retry,
                        timeout=timeout,
                        description=description if isinstance(description, str) else None,
                        retry_on=_retry_on(retry_spec),
                        job_limits=tuple(dict.fromkeys(job_limits)),
                        precheck_limits=precheck_limits,
                    )
                )
        return found

    def _step_call(
        self, value: Any, step: str, phase: str, path: YamlPath
    ) -> CallDefinition | None:
        with_: dict[str, Any] = {}
        if isinstance(value, str):
            reference, ref_path = value, path
        elif isinstance(value, dict) and isinstance(value.get("call"), str):
            reference, ref_path = value["call"], (*path, "call")
            raw = value.get("with")
            if isinstance(raw, dict):
                with_ = self._interpolate(raw, (*path, "with"))
        else:
            return None
        call = self._call(reference, with_, ref_path)
        if call.target is not None:
            from choreo_cli.core.signatures import inspect_callable

            try:
                inspect_callable(call.target, step=step, phase=phase, name=reference, kwargs=with_)
            except StepDefinitionError as exc:
                if exc.key is not None and exc.key in with_:
                    self.problem((*path, "with", exc.key), str(exc), at_key=True)
                else:
                    self.problem(ref_path, str(exc))
        return call

    def _retry(self, spec: Any, path: YamlPath) -> RetryPolicy | None:
        if not isinstance(spec, dict):
            return None
        names = spec.get("on")
        classes: list[type[BaseException]] = []
        for index, name in enumerate(names if isinstance(names, list) else []):
            if not isinstance(name, str) or not _well_formed(name):
                continue  # the schema check reported it
            try:
                found = resolve_exception(name, import_code=self.import_code)
            except ValueError as exc:
                self.problem((*path, "on", index), str(exc))
                continue
            if found is not None:
                refused = refused_exception(found)
                if refused is not None:
                    self.problem((*path, "on", index), f"retry.on: {refused}")
                    continue
                classes.append(found)
        try:
            return build_retry_policy(spec, tuple(classes))
        except (TypeError, ValueError):
            return None  # a wrong type, which the schema check reported


def _retry_on(spec: Any) -> tuple[str, ...]:
    """The ``on:`` entries of a ``retry:`` mapping as written (the strings among them)."""
    names = spec.get("on") if isinstance(spec, dict) else None
    return tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else ()


def _python_path_warning(entry: str, directory: Path) -> str:
    """Why a python_path entry is no directory; a relative one says what it is relative to."""
    where = "" if os.path.isabs(entry) else " (relative to the pipeline file)"
    if directory.exists():
        return (
            f"python_path entry '{entry}'{where} is not a directory — "
            "name the directory that holds the modules"
        )
    return f"python_path directory '{entry}' does not exist{where}"


def _well_formed(reference: str) -> bool:
    """False for a reference the schema check has already reported as malformed."""
    try:
        parse_reference(reference)
    except ReferenceResolutionError:
        return False
    return True


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
