"""Where records run: executors only decide which worker runs a record, never what it does.

``thread`` (the default) runs records on the Coordinator's threads, ``process`` in
worker processes of this machine, ``dask`` on a Dask cluster. Every executor gives the
same Results for the same input.

What runs where, by module:

- in choreo's process: ``thread``; the parent sides ``process`` and ``dask`` (start
  workers, hand out batches, rebuild results) and ``batching``, which they share;
- in the worker processes and on the Dask workers: ``process_worker``, ``dask_worker``
  (with ``dask_attempts``), and ``runner``, the per-batch runner both use;
- both sides: ``base`` (the protocol, PipelineSpec, WorkerDied), ``portable`` (results
  across the process boundary), ``logs`` (``ctx.log`` lines sent from the workers).

>>> pipeline = load_pipeline("pipeline.yaml")  # doctest: +SKIP
>>> with build_executor("process", pipeline, workers=2) as executor:  # doctest: +SKIP
...     results = list(executor.run_many(records))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from choreo_cli.executors.base import Executor, ExecutorUnavailable, PipelineSpec, WorkerDied

if TYPE_CHECKING:
    from choreo_cli.pipeline.definitions import Pipeline

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorUnavailable",
    "PipelineSpec",
    "WorkerDied",
    "build_executor",
]

# What the `dask` extra adds. choreo is installed from a clone or a git URL (it is not on
# PyPI), so the advice installs the extra's requirement itself into the environment that
# runs choreo, however choreo got there (a venv, pipx: `pipx inject choreo-cli ...`).
DASK_REQUIREMENT = "dask[distributed]>=2024.1"


def _thread(pipeline: Pipeline, options: dict[str, Any]) -> Executor:
    from choreo_cli.executors.thread import ThreadExecutor

    return ThreadExecutor(
        pipeline,
        workers=options["workers"],
        dry_run=options["dry_run"],
        timings=options["timings"],
    )


def _process(pipeline: Pipeline, options: dict[str, Any]) -> Executor:
    from choreo_cli.executors.process import ProcessExecutor

    return ProcessExecutor(
        pipeline,
        workers=options["workers"],
        overrides=options["overrides"],
        dry_run=options["dry_run"],
        fail_fast=options["fail_fast"],
    )


def _dask(pipeline: Pipeline, options: dict[str, Any]) -> Executor:
    try:
        import distributed  # noqa: F401
    except ImportError:
        import shlex
        import sys

        raise ExecutorUnavailable(
            "the dask executor needs dask.distributed, which is not installed in choreo's "
            f"environment: {shlex.quote(sys.executable)} -m pip install '{DASK_REQUIREMENT}'"
        ) from None
    from choreo_cli.executors.dask import DaskExecutor

    return DaskExecutor(
        pipeline,
        workers=options["workers"],
        overrides=options["overrides"],
        dry_run=options["dry_run"],
        scheduler=options["scheduler"],
        fail_fast=options["fail_fast"],
    )


EXECUTORS: dict[str, Callable[[Pipeline, dict[str, Any]], Executor]] = {
    "thread": _thread,
    "process": _process,
    "dask": _dask,
}


def build_executor(
    name: str,
    pipeline: Pipeline,
    *,
    workers: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    scheduler: str | None = None,
    timings: bool = True,
    fail_fast: bool = False,
) -> Executor:
    """The executor called ``name`` for ``pipeline`` (nothing started until ``open()``).

    ``overrides`` must be the ones ``pipeline`` was loaded with: workers in other
    processes load the file again. ``scheduler`` (a Dask scheduler's address) is for
    ``dask`` only. ``timings=False``: the thread executor's Results carry no duration
    (cheaper per record; `choreo run` writes none). ``fail_fast``: a process or Dask
    worker whose record did not succeed halts the run itself (``Executor.halt``), so
    that no later record of its batch starts and the other workers stop as soon as
    choreo learns of it (the thread executor needs no help: it halts when told). Raises
    ExecutorUnavailable for an unknown name or a missing extra.
    """
    factory = EXECUTORS.get(name)
    if factory is None:
        known = ", ".join(EXECUTORS)
        raise ExecutorUnavailable(f"unknown executor {name!r} (executors: {known})")
    if scheduler is not None and name != "dask":
        raise ExecutorUnavailable(f"a scheduler address is for the dask executor, not {name!r}")
    options = {
        "workers": pipeline.workers if workers is None else workers,
        "overrides": dict(overrides or {}),
        "dry_run": dry_run,
        "scheduler": scheduler,
        "timings": timings,
        "fail_fast": fail_fast,
    }
    return factory(pipeline, options)
