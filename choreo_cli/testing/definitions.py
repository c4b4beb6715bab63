"""What a test file defines: its tests, mocks and resource replacements, as read and checked."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from choreo_cli.pipeline.definitions import Pipeline
    from choreo_cli.pipeline.yaml_loader import YamlDocument, YamlPath

Phase = Literal["precheck", "job"]


@dataclass(frozen=True)
class MockDefinition:
    """A step's precheck or job replaced for one test: ``call(ctx, **with_)`` (or with the
    record, for a ``call:`` mock), named ``label`` where the step's callable is named."""

    step: str
    phase: Phase
    call: Callable[..., Any]
    with_: Mapping[str, Any]
    label: str
    line: int = 1
    column: int = 1


@dataclass(frozen=True)
class ResourceReplacement:
    """A resource replaced for one test: built by ``factory(**with_)``, or ``value`` as it is."""

    name: str
    factory: Callable[..., Any] | None
    with_: Mapping[str, Any]
    value: Any
    label: str
    line: int = 1
    column: int = 1


@dataclass(frozen=True)
class PipelineTest:
    """One test of a test file: input lines, replacements, and what each record must end as.

    ``index`` is the test's place in the file's ``tests:`` list (0-based); ``input`` is
    JSON Lines bytes, read as ``choreo run`` reads its input.
    """

    index: int
    name: str
    line: int
    column: int
    values: Mapping[str, Any]
    env: Mapping[str, str]
    resources: tuple[ResourceReplacement, ...]
    mocks: tuple[MockDefinition, ...]
    input: bytes
    expect: tuple[Any, ...]
    exit_code: int | None

    @property
    def path(self) -> YamlPath:
        """Where the test is in its file."""
        return ("tests", self.index)


@dataclass(frozen=True)
class PipelineTestFile:
    """A checked test file: the pipeline it tests (loaded with the process's environment)
    and its tests; ``document`` gives the position of every expectation."""

    path: str
    pipeline_path: Path
    pipeline: Pipeline
    tests: tuple[PipelineTest, ...]
    document: YamlDocument = field(compare=False, repr=False)
    # True when the pipeline loaded without a warning (an unset ${VAR}): a test that sets
    # no environment can then reuse it rather than load the file again.
    clean: bool = True
