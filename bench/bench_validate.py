"""`choreo validate` on a 10-step pipeline against `check-jsonschema --schemafile` on the same file.

check-jsonschema only checks the structure; choreo validate also imports the steps and
checks their signatures. Runs alternate so that both see the same machine load; the
figure is the ratio of the median wall times (target: <= 0.9).

    .venv/bin/python bench/bench_validate.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCHEMA = ROOT / "schemas" / "pipeline.schema.json"
STEPS = 10


def write_pipeline(directory: Path) -> Path:
    """A realistic 10-step pipeline with context, a resource and a steps.py beside it."""
    functions = ["import sqlite3\n\n\ndef connect(path):\n    return sqlite3.connect(path)\n"]
    lines = [
        "version: 1",
        "name: bench",
        "description: ten steps",
        "context:",
        "  currency: EUR",
        "  dsn: ${BENCH_DB:-bench.db}",
        "resources:",
        "  db: {factory: steps:connect, with: {path: bench.db}, scope: worker}",
        "defaults:",
        "  timeout: 60",
        "steps:",
    ]
    for index in range(STEPS):
        functions.append(
            f"\n\ndef exists_{index}(ctx, record):\n    return None\n"
            f"\n\ndef job_{index}(ctx, record: dict, *, limit=1):\n    return record\n"
        )
        lines += [
            f"  - name: step {index}",
            f"    precheck: steps:exists_{index}",
            f"    job: {{call: steps:job_{index}, with: {{limit: {index + 1}}}}}",
            "    retry: {attempts: 3, delay: 0.1, on: [ConnectionError]}",
        ]
    (directory / "steps.py").write_text("".join(functions))
    path = directory / "pipeline.yaml"
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
    parser.add_argument("--runs", type=int, default=9, help="runs of each command (default 9)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        pipeline = write_pipeline(directory)
        choreo = [str(BIN / "choreo"), "validate", str(pipeline)]
        baseline = [str(BIN / "check-jsonschema"), "--schemafile", str(SCHEMA), str(pipeline)]
        # `choreo schema` does next to nothing: what every choreo command pays to start.
        floor = [str(BIN / "choreo"), "schema"]
        for command in (choreo, baseline, floor):
            timed(command, directory)  # warm the file system cache and .pyc files
        ours: list[float] = []
        theirs: list[float] = []
        floors: list[float] = []
        for _ in range(args.runs):
            ours.append(timed(choreo, directory))
            theirs.append(timed(baseline, directory))
            floors.append(timed(floor, directory))
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    floor_median = statistics.median(floors)
    ratio = ours_median / theirs_median
    print(
        f"choreo validate ({STEPS} steps): median {ours_median * 1000:.0f} ms over {args.runs} runs"
    )
    print(
        f"check-jsonschema --schemafile: median {theirs_median * 1000:.0f} ms over {args.runs} runs"
    )
    print(f"choreo schema (start-up floor): median {floor_median * 1000:.0f} ms")
    print(f"ratio: {ratio:.2f} (target <= 0.9) {'ok' if ratio <= 0.9 else 'MISSED'}")


if __name__ == "__main__":
    main()
