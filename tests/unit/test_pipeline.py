"""Loading pipeline files into coordinators, and checking them for `choreo validate`."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo_cli.core.retry import RetryPolicy
from choreo_cli.errors import PipelineError
from choreo_cli.pipeline.loader import (
    check_pipeline,
    isolated_imports,
    load_pipeline,
    parse_override,
)
from choreo_cli.pipeline.problems import Problem

STEPS = """\
EVENTS = []

def connect(path, mode="rw"):
    EVENTS.append(("open", path))
    yield {"path": path, "mode": mode}
    EVENTS.append(("close", path))

def exists(ctx, record, *, tolerance=0.0):
    return tolerance

def create(ctx, record: dict, *, prefix):
    return f"{prefix}{record['id']}@{ctx.resources.db['path']}/{ctx.values['currency']}"

class Flaky(Exception):
    pass
"""

PIPELINE = """\
version: 1
name: demo
description: a demo
workers: 2
context:
  currency: ${CURRENCY:-EUR}
  literal: $${NOT_A_VAR}
  nested: {paths: ["${HOME_DIR}/a"]}
resources:
  db:
    factory: steps:connect
    with: {path: "${DB:-test.db}"}
    scope: worker
defaults:
  timeout: 60
  retry: {attempts: 2}
steps:
  - name: create
    precheck: {call: steps:exists, with: {tolerance: 0.5}}
    job: {call: steps.create, with: {prefix: "id-"}}
    retry: {attempts: 4, delay: 0.5, backoff: 2, max_delay: 3, on: [ConnectionError, steps:Flaky]}
  - name: second
    job: {call: steps:create, with: {prefix: "${PREFIX:-x}"}}
    timeout: 5
"""


@pytest.fixture(autouse=True)
def _forget_imports() -> Iterator[None]:
    with isolated_imports():
        yield


def write_pipeline(directory: Path, pipeline: str = PIPELINE, steps: str | None = STEPS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if steps is not None:
        (directory / "steps.py").write_text(textwrap.dedent(steps))
    path = directory / "pipeline.yaml"
    path.write_text(textwrap.dedent(pipeline))
    return path


def test_load_pipeline_reads_everything(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path)
    pipeline = load_pipeline(path, environ={"HOME_DIR": "/h", "CURRENCY": "USD"})
    assert (pipeline.name, pipeline.description, pipeline.workers) == ("demo", "a demo", 2)
    assert pipeline.path == path
    assert pipeline.python_path == (tmp_path.resolve(),)
    assert pipeline.values == {
        "currency": "USD",
        "literal": "${NOT_A_VAR}",
        "nested": {"paths": ["/h/a"]},
    }
    first, second = pipeline.steps
    assert first.job.reference == "steps.create"
    assert first.job.with_ == {"prefix": "id-"}
    assert first.precheck is not None and first.precheck.with_ == {"tolerance": 0.5}
    assert first.timeout == 60.0
    assert first.retry is not None
    assert (
        first.retry.attempts,
        first.retry.delay,
        first.retry.backoff,
        first.retry.max_delay,
    ) == (
        4,
        0.5,
        2.0,
        3.0,
    )
    assert first.retry.on[0] is ConnectionError
    assert first.retry.on[1].__name__ == "Flaky"
    assert second.retry == RetryPolicy(attempts=2)
    assert second.timeout == 5.0
    assert second.job.with_ == {"prefix": "x"}
    (resource,) = pipeline.resources
    assert (resource.name, resource.scope, resource.factory.with_) == (
        "db",
        "worker",
        {"path": "test.db"},
    )


def test_the_coordinator_runs_with_values_resources_and_steps(tmp_path: Path) -> None:
    pipeline = load_pipeline(write_pipeline(tmp_path), environ={"HOME_DIR": "/h"})
    steps_module = sys.modules["steps"]
    with pipeline.coordinator(workers=1) as coordinator:
        assert coordinator.workers == 1
        assert [s.job_name for s in coordinator.steps] == ["steps.create", "steps:create"]
        assert coordinator.steps[0].precheck_name == "steps:exists"
        assert coordinator.steps[0].retry == pipeline.steps[0].retry
        result = coordinator.run({"id": 7})
        assert result.status == "succeeded", result.error
        assert result.bag.job("create") == "id-7@test.db/EUR"
        assert result.bag.precheck("create") == 0.5
    assert steps_module.EVENTS == [("open", "test.db"), ("close", "test.db")]
    assert pipeline.coordinator().workers == 2


def test_overrides_replace_or_add_context_values(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path)
    pipeline = load_pipeline(path, {"currency": "GBP", "limit": 3}, environ={"HOME_DIR": "/h"})
    assert pipeline.values["currency"] == "GBP"
    assert pipeline.values["limit"] == 3


def test_an_unset_variable_is_an_error_when_loading(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path)
    with pytest.raises(PipelineError) as info:
        load_pipeline(path, environ={})
    assert info.value.problems == [
        Problem(
            str(path),
            8,
            20,
            "environment variable 'HOME_DIR' is not set and has no default — "
            "set it, or write ${HOME_DIR:-default}",
        )
    ]


def test_load_pipeline_lists_every_problem(tmp_path: Path) -> None:
    pipeline = """\
    version: 1
    steps:
      - name: a
        job: steps:nope
      - name: A
        job: steps:create
    """
    path = write_pipeline(tmp_path, pipeline)
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    assert str(info.value).splitlines() == [
        f"{path}:4:10: cannot import 'steps:nope': 'steps' has no attribute 'nope' — "
        "it defines: Flaky, connect, create, exists",
        f"{path}:5:11: duplicate step name 'A': 'a' at line 3 has it already — "
        "step names must be unique, ignoring case",
        f"{path}:6:10: step 'A': job steps:create: requires the keyword argument 'prefix': "
        "add it under the step's with:",
    ]


def test_check_pipeline_warns_about_unset_variables_and_errs_when_strict(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path)
    (warning,) = check_pipeline(path, environ={})
    assert warning.severity == "warning"
    assert str(warning).startswith(f"{path}:8:20: warning: environment variable 'HOME_DIR'")
    (error,) = check_pipeline(path, environ={}, strict=True)
    assert error.severity == "error"


def test_check_pipeline_forgets_what_each_file_imported(tmp_path: Path) -> None:
    one = write_pipeline(
        tmp_path / "one",
        "version: 1\nsteps: [{name: a, job: steps:first}]\n",
        "def first(ctx):\n    return 1\n",
    )
    two = write_pipeline(
        tmp_path / "two",
        "version: 1\nsteps: [{name: a, job: steps:second}]\n",
        "def second(ctx):\n    return 2\n",
    )
    path_before = list(sys.path)
    assert check_pipeline(one) == []
    assert "steps" not in sys.modules
    assert sys.path == path_before
    assert check_pipeline(two) == []


def test_load_pipeline_prefers_its_own_steps_module(tmp_path: Path) -> None:
    one = write_pipeline(
        tmp_path / "one",
        "version: 1\nsteps: [{name: a, job: steps:first}]\n",
        "def first(ctx): ...\n",
    )
    two = write_pipeline(
        tmp_path / "two",
        "version: 1\nsteps: [{name: a, job: steps:second}]\n",
        "def second(ctx): ...\n",
    )
    load_pipeline(one)
    assert load_pipeline(two).steps[0].job.target.__name__ == "second"


def test_no_import_imports_no_user_code(tmp_path: Path) -> None:
    marker = tmp_path / "imported.marker"
    steps = f"from pathlib import Path\nPath({str(marker)!r}).touch()\ndef f(ctx):\n    return 1\n"
    path = write_pipeline(
        tmp_path,
        "version: 1\nsteps:\n  - name: a\n    job: steps:f\n    retry: {on: [steps:Oops]}\n",
        steps,
    )
    assert check_pipeline(path, import_code=False) == []
    assert not marker.exists()
    assert [p.message for p in check_pipeline(path)] == [
        "cannot import 'steps:Oops': 'steps' has no attribute 'Oops' — it defines: f"
    ]
    assert marker.exists()


def test_resource_factories_are_checked_but_not_called(tmp_path: Path) -> None:
    pipeline = """\
    version: 1
    resources:
      db: {factory: steps:connect, with: {pth: x}}
      cache: {factory: steps:EVENTS}
    steps: [{name: a, job: {call: steps:create, with: {prefix: p}}}]
    """
    path = write_pipeline(tmp_path, pipeline)
    assert [str(p) for p in check_pipeline(path)] == [
        f"{path}:3:17: resource 'db': factory steps:connect requires the argument 'path': "
        "add it under the resource's with:",
        f"{path}:3:39: resource 'db': factory steps:connect does not accept the keyword "
        "argument 'pth' given in with: — did you mean 'path'?",
        f"{path}:4:20: resource 'cache': factory steps:EVENTS is not callable (it is a list)",
    ]


def test_a_missing_python_path_directory_is_a_warning(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path, "version: 1\npython_path: [lib]\nsteps: [{name: a, job: builtins.print}]\n", None
    )
    (problem,) = check_pipeline(path, import_code=False)
    assert str(problem) == (
        f"{path}:2:15: warning: python_path directory 'lib' does not exist "
        "(relative to the pipeline file)"
    )


def test_a_python_path_entry_that_is_a_file_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text("")
    pipeline_dir = tmp_path / "a" / "b"
    pipeline_dir.mkdir(parents=True)
    path = write_pipeline(
        pipeline_dir,
        'version: 1\npython_path: ["../../evil.py"]\nsteps: [{name: a, job: builtins.print}]\n',
        None,
    )
    (problem,) = check_pipeline(path, import_code=False)
    assert str(problem) == (
        f"{path}:2:15: warning: python_path entry '../../evil.py' (relative to the pipeline "
        "file) is not a directory — name the directory that holds the modules"
    )


def test_an_absolute_python_path_entry_is_not_said_to_be_relative(tmp_path: Path) -> None:
    missing, a_file = tmp_path / "nowhere", tmp_path / "steps.py"
    a_file.write_text("")
    path = write_pipeline(
        tmp_path,
        f"version: 1\npython_path: ['{missing}', '{a_file}']\n"
        "steps: [{name: a, job: builtins.print}]\n",
        None,
    )
    assert [p.message for p in check_pipeline(path, import_code=False)] == [
        f"python_path directory '{missing}' does not exist",
        f"python_path entry '{a_file}' is not a directory — "
        "name the directory that holds the modules",
    ]


def test_python_path_is_relative_to_the_pipeline_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "tasks_in_lib.py").write_text("def run(ctx):\n    return 'ran'\n")
    path = write_pipeline(
        tmp_path,
        "version: 1\npython_path: [lib]\nsteps: [{name: a, job: tasks_in_lib:run}]\n",
        None,
    )
    monkeypatch.chdir("/")
    pipeline = load_pipeline(path)
    assert pipeline.coordinator().run(None).bag.job("a") == "ran"


def test_an_unreadable_file_is_a_problem_of_that_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert check_pipeline(missing) == [
        Problem(str(missing), 1, 1, "cannot read the file: No such file or directory")
    ]
    with pytest.raises(PipelineError):
        load_pipeline(missing)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("limit=3", ("limit", 3)),
        ("rate=0.5", ("rate", 0.5)),
        ("flag=true", ("flag", True)),
        ("name=EUR", ("name", "EUR")),
        ("expr=a=b", ("expr", "a=b")),
        ("list=[1, 2]", ("list", "[1, 2]")),
        ("empty=", ("empty", None)),
        (" key = x", ("key", " x")),
        # YAML 1.2 core schema, as in the pipeline file itself.
        ("mode=no", ("mode", "no")),
        ("mode=on", ("mode", "on")),
        ("time=1:30", ("time", "1:30")),
        ("day=2024-01-01", ("day", "2024-01-01")),
        ("mask=0o17", ("mask", 15)),
        ("mask=0x1f", ("mask", 31)),
        ("n=1_000", ("n", "1_000")),
        ("rate=1e3", ("rate", 1000.0)),
        ("cap=.inf", ("cap", float("inf"))),
        ("none=~", ("none", None)),
        ("flag=FALSE", ("flag", False)),
    ],
)
def test_parse_override_reads_a_yaml_scalar(text: str, expected: tuple[str, object]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=3", ""])
def test_parse_override_needs_key_equals_value(text: str) -> None:
    with pytest.raises(ValueError, match="--set needs KEY=VALUE"):
        parse_override(text)


def test_an_override_replaces_a_value_whose_variable_is_unset(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path)
    pipeline = load_pipeline(path, {"nested": "given"}, environ={})
    assert list(pipeline.values) == ["currency", "literal", "nested"]
    assert pipeline.values["nested"] == "given"


def test_scalars_are_read_as_yaml_1_2_as_the_schema_and_editors_read_them(
    tmp_path: Path,
) -> None:
    path = write_pipeline(
        tmp_path,
        "version: 1\nname: no\ndescription: 2024-01-01\n"
        "context: {mode: off, mask: 0o17, at: 1:30}\n"
        "steps: [{name: yes, job: builtins.print}, {name: on, job: builtins.print}]\n",
        None,
    )
    assert check_pipeline(path) == []
    pipeline = load_pipeline(path)
    assert (pipeline.name, pipeline.description) == ("no", "2024-01-01")
    assert [step.name for step in pipeline.steps] == ["yes", "on"]
    assert pipeline.values == {"mode": "off", "mask": 15, "at": "1:30"}


def test_a_sexagesimal_number_is_not_an_integer(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path, "version: 1\nworkers: 1:30\nsteps: [{name: a, job: builtins.print}]\n", None
    )
    assert [str(p) for p in check_pipeline(path)] == [
        f"{path}:2:10: 'workers' must be an integer, not a string"
    ]


def test_a_tag_is_one_problem_and_the_rest_of_the_file_is_checked(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        "version: 1\n"
        "nmae: x\n"
        "context: {shell: !!python/object/apply:os.system [echo pwned]}\n"
        "steps:\n"
        "  - {name: a, job: !custom steps:create}\n"
        "  - {name: A, job: steps:nope}\n",
    )
    assert [str(p) for p in check_pipeline(path)] == [
        f"{path}:2:1: unknown key 'nmae' — did you mean 'name'?",
        f"{path}:3:18: tag '!!python/object/apply:os.system' on a sequence is not supported — "
        "choreo reads plain YAML only and never runs tags",
        f"{path}:5:20: tag '!custom' is not supported — choreo reads plain YAML only and never "
        "runs tags",
        f"{path}:5:20: step 'a': job steps:create: requires the keyword argument 'prefix': "
        "add it under the step's with:",
        f"{path}:6:12: duplicate step name 'A': 'a' at line 5 has it already — step names "
        "must be unique, ignoring case",
        f"{path}:6:20: cannot import 'steps:nope': 'steps' has no attribute 'nope' — "
        "it defines: Flaky, connect, create, exists",
    ]
    with pytest.raises(PipelineError, match="never runs tags"):
        load_pipeline(path)
