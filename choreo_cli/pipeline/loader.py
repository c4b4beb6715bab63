"""Pipeline files: `load_pipeline()` for running, `check_pipeline()` for `choreo validate`."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from choreo_cli.errors import PipelineError
from choreo_cli.pipeline.definitions import Pipeline
from choreo_cli.pipeline.problems import Problem
from choreo_cli.pipeline.refs import library_dirs


def load_pipeline(
    path: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Pipeline:
    """Load a pipeline file and import its callables; raises PipelineError listing every problem.

    ``overrides`` replace or add context values after interpolation (``--set KEY=VALUE``).
    An unset ``${VAR}`` without a default is an error here. The file's ``python_path``
    directories stay at the front of ``sys.path``.

    Examples:
        >>> pipeline = load_pipeline("pipeline.yaml", overrides={"currency": "USD"})  # doctest: +SKIP
        >>> pipeline.values["currency"]  # doctest: +SKIP
        'USD'
    """
    from choreo_cli.pipeline.reader import PipelineReader

    reader = PipelineReader(
        path, import_code=True, strict=True, overrides=overrides, environ=environ
    )
    pipeline = reader.read()
    errors = [p for p in reader.problems if p.is_error]
    if errors or pipeline is None:
        raise PipelineError(_in_order(errors))
    return pipeline


def check_pipeline(
    path: str | os.PathLike[str],
    *,
    import_code: bool = True,
    strict: bool = False,
    environ: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Every problem in a pipeline file (errors and warnings), in file order.

    The file is checked as if alone: modules it imported are forgotten afterwards and
    ``sys.path`` is restored. With ``import_code=False`` no user code is imported.

    >>> check_pipeline("pipeline.yaml", import_code=False)  # doctest: +SKIP
    []
    """
    from choreo_cli.pipeline.reader import PipelineReader

    reader = PipelineReader(path, import_code=import_code, strict=strict, environ=environ)
    with isolated_imports():
        reader.read()
    return _in_order(reader.problems)


def read_pipeline_structure(path: str | os.PathLike[str]) -> tuple[Pipeline | None, list[Problem]]:
    """Read a pipeline as written, importing no user code and expanding no ``${VAR}``.

    For ``choreo show``: values from the environment (secrets, often) are not shown.
    """
    from choreo_cli.pipeline.reader import PipelineReader

    reader = PipelineReader(path, import_code=False, strict=False, interpolate=False)
    pipeline = reader.read()
    return pipeline, _in_order(reader.problems)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``--set KEY=VALUE``; VALUE is read as a plain YAML 1.2 scalar, as in the file.

    ``3`` is an int, ``0x1f`` is 31, ``true`` a bool, ``~`` or nothing null; ``no``,
    ``1:30`` and ``2024-01-01`` stay strings.

    >>> parse_override("limit=3")
    ('limit', 3)
    >>> parse_override("mode=no")
    ('mode', 'no')
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set needs KEY=VALUE, got {text!r}")
    from choreo_cli.pipeline.yaml_loader import scalar_value

    return key, scalar_value(raw)


@contextlib.contextmanager
def isolated_imports() -> Iterator[None]:
    """Run the block as if no user module had been imported; forget what it imported after.

    ``sys.path`` is restored too. Modules of the standard library, of installed packages
    and of choreo itself are kept: they are the same for every pipeline, and some cannot
    be imported twice.
    """
    saved_path = list(sys.path)
    hidden = {n: m for n, m in list(sys.modules.items()) if _is_user_module(n, m)}
    for name in hidden:
        del sys.modules[name]
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for name, module in list(sys.modules.items()):
            if _is_user_module(name, module):
                del sys.modules[name]
        sys.modules.update(hidden)
        importlib.invalidate_caches()


def _is_user_module(name: str, module: Any) -> bool:
    if name in ("__main__", "choreo_cli") or name.startswith("choreo_cli."):
        return False
    files = [getattr(module, "__file__", None), *list(getattr(module, "__path__", None) or [])]
    files = [f for f in files if isinstance(f, str)]
    if not files:
        return False  # a builtin module
    library = library_dirs()
    return not all(f.startswith(library) or os.path.abspath(f).startswith(library) for f in files)


def _in_order(problems: list[Problem]) -> list[Problem]:
    return sorted(dict.fromkeys(problems), key=lambda p: (p.line, p.column))
