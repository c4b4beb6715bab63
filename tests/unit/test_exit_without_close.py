"""A coordinator used without ``with`` or ``close()`` leaves nothing on stderr at exit.

With async callables, worker threads end at interpreter exit and close their event loops
themselves (a loop closed from the main thread under a thread still running it printed
"Cannot close a running event loop" once per worker), and tasks a callable left running
are cancelled: a script that forgets ``close()`` exits 0 with an empty stderr, whatever
the number of workers, with or without a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = """
import asyncio, atexit, sys, threading

def report():
    alive = sorted(t.name for t in threading.enumerate() if t.name.startswith("choreo-"))
    print("alive:", ",".join(n for n in alive if n != "choreo-watchdog"))

atexit.register(report)  # registered first: runs after choreo's own exit hook

from choreo_cli import Coordinator, Step

workers, timeout, partial = int(sys.argv[1]), sys.argv[2] == "timeout", sys.argv[3] == "partial"

async def job(record, ctx):
    asyncio.get_running_loop().create_task(asyncio.sleep(30))  # left running
    await asyncio.sleep(0.001)
    return record

coordinator = Coordinator(workers=workers)
coordinator.add_step(Step(name="a", job=job, **({"timeout": 10} if timeout else {})))
if partial:
    results = coordinator.run_many(range(100))
    print(next(results).status)  # the generator is left open too
else:
    print([r.status for r in coordinator.run_many(range(10))].count("succeeded"))
# no close(), no with
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("workers", ["1", "4"])
@pytest.mark.parametrize("timeout", ["timeout", "none"])
@pytest.mark.parametrize("partial", ["partial", "all"])
def test_async_callables_without_close_leave_nothing_on_stderr(
    tmp_path: Path, workers: str, timeout: str, partial: str
) -> None:
    done = _run(tmp_path, workers, timeout, partial)
    assert done.stderr == ""
    assert done.returncode == 0
    first, alive = done.stdout.splitlines()
    assert first == ("succeeded" if partial == "partial" else "10")
    assert alive == "alive: "  # the worker and carrier threads ended before the process


PIPELINE = """
version: 1
steps:
  - name: a
    job: steps:job
"""

STEPS = """
import asyncio

async def job(record, ctx):
    asyncio.get_running_loop().create_task(asyncio.sleep(30))
    await asyncio.sleep(0.001)
    return record
"""

EXECUTOR_SCRIPT = """
import sys
from choreo_cli import load_pipeline
from choreo_cli.executors import build_executor

if __name__ == "__main__":
    executor = build_executor(sys.argv[1], load_pipeline("p.yaml"), workers=2)
    executor.open()
    print([r.status for r in executor.run_many(range(10))].count("succeeded"))
    # no close(), no with
"""


@pytest.mark.parametrize("executor", ["thread", "process", "dask"])
def test_an_executor_never_closed_leaves_nothing_on_stderr(tmp_path: Path, executor: str) -> None:
    if executor == "dask":
        pytest.importorskip("distributed")
    (tmp_path / "p.yaml").write_text(PIPELINE)
    (tmp_path / "steps.py").write_text(textwrap.dedent(STEPS))
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(EXECUTOR_SCRIPT))
    temp = tmp_path / "temp"
    temp.mkdir()
    done = subprocess.run(
        [sys.executable, str(script), executor],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "10\n")
    # A local Dask cluster's progress folder is swept too.
    assert list(temp.glob("choreo-dask-*")) == []
