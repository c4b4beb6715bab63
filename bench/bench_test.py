"""`choreo test` on a file of 200 tests over a 3-step pipeline, against `choreo --version`.

The tests mix what test files hold: context values (`set:`), mocks (returns, raises Skip,
call), a resource replaced by a value, several records each, and an environment variable
in one test out of ten. The figure is the median wall time of `choreo test` minus that of
`choreo --version` (start-up), measured alternately in the same run (target: < 1 s).
`choreo schema` is timed too: a command's start-up (typer parsing its options), which
every command pays and `--version` does not.

    .venv/bin/python bench/bench_test.py [--runs N] [--tests N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent

STEPS = """
from choreo_cli import Skip


def connect(path):
    return {"path": path}


def exists(ctx, record):
    if record.get("known"):
        raise Skip("exists", data=record["id"])


def create(ctx, record: dict):
    return record["id"] * 2


def enrich(ctx, record, *, factor=1):
    return record["id"] * factor


def load(ctx, record):
    return ctx.values["currency"]
"""

PIPELINE = """
version: 1
name: bench
context:
  currency: ${BENCH_CURRENCY:-EUR}
resources:
  db: {factory: steps:connect, with: {path: ":memory:"}}
steps:
  - name: create
    precheck: steps:exists
    job: steps:create
  - name: enrich
    job: {call: steps:enrich, with: {factor: 3}}
  - name: load
    job: steps:load
"""


def write_tests(directory: Path, count: int) -> Path:
    (directory / "steps.py").write_text(STEPS)
    (directory / "pipeline.yaml").write_text(PIPELINE)
    lines = ["version: 1", "pipeline: pipeline.yaml", "tests:"]
    for index in range(count):
        lines += [f"  - name: test {index}", "    set: {currency: USD}"]
        if index % 10 == 0:
            lines.append("    env: {BENCH_CURRENCY: GBP}")
        if index % 3 == 0:
            lines += ["    mocks:", "      enrich:", "        job: {returns: 7}"]
        if index % 5 == 0:
            lines += ["    resources:", "      db: {value: {rows: []}}"]
        lines += [
            "    input:",
            f"      - {{id: {index}}}",
            f"      - {{id: {index + 1}, known: true}}",
            "    expect:",
            "      - status: succeeded",
            "        steps: {create: succeeded, enrich: succeeded, load: succeeded}",
            "        data: {job: {load: USD}}",
            "      - status: succeeded",
            "        steps: {create: skipped}",
            "        errors: [{step: create, phase: precheck, type: Skip, message: exists}]",
            f"        data: {{precheck: {{create: {index + 1}}}}}",
            "    exit_code: 0",
        ]
    path = directory / "bench.test.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (default 7)")
    parser.add_argument("--tests", type=int, default=200, help="tests in the file (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        test_file = write_tests(directory, args.tests)
        command = [str(BIN / "choreo"), "test", "-q", str(test_file)]
        floor = [str(BIN / "choreo"), "--version"]
        command_floor = [str(BIN / "choreo"), "schema"]
        for each in (command, floor, command_floor):
            timed(each, directory)  # warm the file system cache and .pyc files
        ours: list[float] = []
        floors: list[float] = []
        command_floors: list[float] = []
        for _ in range(args.runs):
            ours.append(timed(command, directory))
            floors.append(timed(floor, directory))
            command_floors.append(timed(command_floor, directory))
    ours_median, floor_median = statistics.median(ours), statistics.median(floors)
    command_median = statistics.median(command_floors)
    past = ours_median - floor_median
    print(f"choreo test ({args.tests} tests, 3 steps): median {ours_median * 1000:.0f} ms")
    print(f"choreo --version (start-up): median {floor_median * 1000:.0f} ms")
    print(f"choreo schema (a command's start-up): median {command_median * 1000:.0f} ms")
    print(
        f"past start-up: {past * 1000:.0f} ms (target < 1000 ms) "
        f"{'ok' if past < 1.0 else 'MISSED'}; "
        f"past a command's start-up: {(ours_median - command_median) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
