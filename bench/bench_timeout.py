"""What `timeout:` costs when every call returns in time: the W1 pipeline with and without it.

The pipeline and records of `bench/bench_run.py` (two steps, trivial prechecks and jobs),
once as they are and once with ``defaults: {timeout: 60}``. Both run alternately, several
rounds, and the median of the ratios is printed (the machines are shared and noisy):

- ``choreo run`` as a command (target: at most 1.3x; a thread per call made it 90-180x);
- in-process ``run_lines`` (the same loop, without start-up and writing);
- in-process ``Coordinator.run_many`` with one worker, where a plan with a timeout hands
  each record to a carrier thread and waits for it (see the README's "retry: and
  timeout:"), and with four worker threads.

    python bench/bench_timeout.py [--records N] [--rounds R]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from bench_run import PIPELINE, STEPS, Timing, timed, write_records

from choreo_cli import Coordinator, Step
from choreo_cli.jsonl.line_runner import run_lines

TIMEOUT = "defaults:\n  timeout: 60\n"


def run_choreo(pipeline: Path, path: Path, out: Path) -> Timing:
    """One `choreo run` (one worker, the fused loop)."""
    choreo = Path(sys.executable).parent / "choreo"
    return timed([str(choreo), "run", str(pipeline), "-i", str(path), "-q"], out)


def exists(ctx: Any, record: Any) -> None:
    return None


def create(ctx: Any, record: Any) -> int:
    return 1


def coordinator(timeout: float | None, workers: int = 1) -> Coordinator:
    """The W1 steps in a coordinator, as `choreo run` builds it (no timings)."""
    built = Coordinator(workers=workers, timings=False)
    built.add_step(Step("create statement", job=create, precheck=exists, timeout=timeout))
    built.add_step(Step("create statement line", job=create, precheck=exists, timeout=timeout))
    return built


def in_process(
    run: Callable[[Coordinator], int], timeout: float | None, count: int, workers: int = 1
) -> float:
    """Seconds ``run`` takes over ``count`` records on a fresh coordinator (opened first)."""
    with coordinator(timeout, workers) as built:
        started = time.perf_counter()
        done = run(built)
        elapsed = time.perf_counter() - started
    assert done == count, (done, count)
    return elapsed


def compare(
    name: str,
    rounds: int,
    measure: Callable[[float | None], float],
    target: float | None = None,
) -> None:
    """Print the median ratio of ``measure(60)`` to ``measure(None)``, alternating, and
    against ``target`` (the most it may be) ok or MISSED."""
    ratios = []
    plain = with_timeout = 0.0
    for _ in range(rounds):
        plain = measure(None)
        with_timeout = measure(60)
        ratios.append(with_timeout / plain)
    ratio = statistics.median(ratios)
    verdict = "" if target is None else f" {'ok' if ratio <= target else 'MISSED'}"
    print(
        f"{name}: with timeout / without {ratio:.2f}x "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}"
        f"{'' if target is None else f'; target <= {target}x'}; last: {plain:.3f}s without, "
        f"{with_timeout:.3f}s with){verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    count = args.records
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "steps.py").write_text(STEPS)
        plain = root / "plain.yaml"
        plain.write_text(PIPELINE)
        timeout = root / "timeout.yaml"
        timeout.write_text(PIPELINE + TIMEOUT)
        records = root / "records.jsonl"
        write_records(records, count)
        import choreo_cli

        compileall.compile_dir(Path(choreo_cli.__file__).parent, quiet=1)

        def command(seconds: float | None) -> float:
            pipeline = plain if seconds is None else timeout
            return run_choreo(pipeline, records, root / "out.jsonl").wall

        compare(f"choreo run, {count:,} records", args.rounds, command, 1.3)

    lines = [
        orjson.dumps({"statement_id": f"ST-{i % 1000}", "amount": i * 0.5}) for i in range(count)
    ]
    batches = [lines[n : n + 1024] for n in range(0, count, 1024)]
    values = [orjson.loads(line) for line in lines]

    def fused(seconds: float | None) -> float:
        def run(built: Coordinator) -> int:
            written: list[bytes] = []
            runs = run_lines(
                built, batches, clean_line=b"%d %d\n", put=written.append, emit=written.append
            )
            return sum(runs)

        return in_process(run, seconds, count)

    compare(f"in-process run_lines, {count:,} records", args.rounds, fused)

    many = min(count, 100_000)  # a hand-over per record: fewer records suffice

    def serial(seconds: float | None) -> float:
        return in_process(
            lambda built: sum(1 for _ in built.run_many(values[:many])), seconds, many
        )

    compare(f"in-process run_many, 1 worker, {many:,} records", args.rounds, serial)

    def pool(seconds: float | None) -> float:
        return in_process(
            lambda built: sum(1 for _ in built.run_many(values[:many])), seconds, many, workers=4
        )

    compare(f"in-process run_many, 4 workers, {many:,} records", args.rounds, pool)


if __name__ == "__main__":
    main()
