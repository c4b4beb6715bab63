"""Executors compared (the README's "Scaling out"): every figure is a ratio of two runs measured in this run.

- CPU-bound (a pure-Python job of ~1 ms per record): process with 2 workers vs 1
  worker (target >= 1.7x); a Dask LocalCluster of 2 workers vs the serial thread
  executor (target >= 1.6x). 8,000 records by default: runs of seconds, where the
  batches' ramp-up and the last batch (tens of ms) weigh little.
- Trivial steps (one job returning a constant), end to end (`choreo run`: JSON in,
  result lines out): process (2 workers) and dask (2 workers) throughput vs the thread
  executor's (1 worker, its default), target >= 0.5x, over 1M records (with
  fewer, the few seconds a local Dask cluster takes to start, which vary by a few tenths,
  weigh on the difference of two run times).
- I/O-bound (the job sleeps 5 ms; 2,000 records; 64 workers): efficiency, ideal time
  / measured, of the thread executor with a sync and with an async job (target >= 0.90).

Start-up (spawning processes, starting a cluster) is measured apart and left out of
the throughput: it is paid once per run, not per record. The library-level figures
(run_many without JSON) are printed too, for the cost per record in the parent.

    python bench/bench_executors.py [--cpu-records N] [--trivial-records N] [--rounds R]

A figure below its target says MISSED on its line; the exit status is 0 all the same.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from choreo_cli import load_pipeline
from choreo_cli.core.items import Record
from choreo_cli.executors import build_executor

STEPS = """
    import asyncio
    import time


    def burn(ctx, record, *, loops):
        total = 0
        for i in range(loops):
            total += i * i
        return total


    def constant(ctx, record):
        return 1


    def nap(ctx, record):
        time.sleep(0.005)


    async def async_nap(ctx, record):
        await asyncio.sleep(0.005)
"""


def pipeline_text(job: str, with_: str = "") -> str:
    call = f"{{call: bench_steps:{job}, with: {{{with_}}}}}" if with_ else f"bench_steps:{job}"
    return f"version: 1\nsteps:\n  - name: step\n    job: {call}\n"


def calibrate_loops(target: float = 0.001) -> int:
    """How many loop turns of ``burn`` take about ``target`` seconds here.

    The fastest of several timings: on a shared machine one timing can be stretched
    several times over by other processes (a job calibrated then is far shorter than 1 ms).
    """
    loops = 10_000
    while True:
        elapsed = min(_loop_seconds(loops) for _ in range(5))
        if elapsed > 0.01:
            return max(1, int(loops * target / elapsed))
        loops *= 2


def _loop_seconds(loops: int) -> float:
    started = time.perf_counter()
    total = 0
    for i in range(loops):
        total += i * i
    return time.perf_counter() - started


def records(count: int) -> Iterator[Record]:
    for i in range(count):
        yield Record({"id": i}, i + 1)


def timed_run(path: Path, executor: str, workers: int, count: int) -> tuple[float, float]:
    """(start-up seconds, run seconds) of ``count`` records."""
    started = time.perf_counter()
    with build_executor(executor, load_pipeline(path), workers=workers) as running:
        if executor == "thread":
            running.open(prebuild_workers=True)  # start the threads before the clock
        opened = time.perf_counter()
        done = sum(1 for _ in running.run_many(records(count)))
        finished = time.perf_counter()
    assert done == count, (done, count)
    return opened - started, finished - opened


def write_lines(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as file:
        for i in range(count):
            file.write(f'{{"id": {i}, "name": "record {i}"}}\n')
    return path


def cli_seconds(pipeline: Path, data: Path, executor: str, workers: int) -> float:
    """Wall time of `choreo run` (start-up included), results to /dev/null."""
    command = [
        str(Path(sys.executable).parent / "choreo"),
        "run",
        str(pipeline),
        "-i",
        str(data),
        "-o",
        os.devnull,
        "-q",
        "--executor",
        executor,
        "-w",
        str(workers),
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def median_ratio(
    path: Path,
    a: tuple[str, int],
    b: tuple[str, int],
    count: int,
    rounds: int,
) -> tuple[float, float, float]:
    """Median over rounds of time(b) / time(a): (ratio, a's, b's median s).

    Every run of ``a`` is bracketed by runs of ``b`` (b a b a ... b), and its round's ratio
    takes the mean of the two: this host's speed drifts by tens of percent within a
    minute, and a drift then weighs on both sides of the ratio alike.
    """
    times_b = [timed_run(path, b[0], b[1], count)[1]]
    times_a: list[float] = []
    ratios = []
    for _ in range(rounds):
        times_a.append(timed_run(path, a[0], a[1], count)[1])
        times_b.append(timed_run(path, b[0], b[1], count)[1])
        ratios.append((times_b[-2] + times_b[-1]) / 2 / times_a[-1])
    if rounds > 1:
        print(f"    (rounds {min(ratios):.2f}-{max(ratios):.2f}x)")
    return statistics.median(ratios), statistics.median(times_a), statistics.median(times_b)


def report(label: str, value: float, target: float, detail: str) -> bool:
    ok = value >= target
    print(f"{label:<58} {value:6.2f}x  (target >= {target}x) {'ok' if ok else 'MISSED'}  {detail}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-records", type=int, default=8000)
    parser.add_argument("--trivial-records", type=int, default=1_000_000)
    parser.add_argument("--io-records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", choices=["cpu", "trivial", "io"], action="append", help="Run these parts only."
    )
    args = parser.parse_args(argv)
    parts = set(args.only or ["cpu", "trivial", "io"])

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bench_steps.py").write_text(textwrap.dedent(STEPS), encoding="utf-8")
        loops = calibrate_loops()
        cpu = root / "cpu.yaml"
        cpu.write_text(pipeline_text("burn", f"loops: {loops}"), encoding="utf-8")
        trivial = root / "trivial.yaml"
        trivial.write_text(pipeline_text("constant"), encoding="utf-8")
        nap = root / "nap.yaml"
        nap.write_text(pipeline_text("nap"), encoding="utf-8")
        async_nap = root / "async_nap.yaml"
        async_nap.write_text(pipeline_text("async_nap"), encoding="utf-8")
        results: list[bool] = []
        if "cpu" in parts:
            results.extend(cpu_part(cpu, loops, args))
        if "trivial" in parts:
            results.extend(trivial_part(root, trivial, args))
        if "io" in parts:
            results.extend(io_part(nap, async_nap, args))
    missed = results.count(False)
    if missed:
        print(f"{missed} of {len(results)} figures MISSED their target")
    return 0  # a bench reports its figures; it does not gate


def cpu_part(cpu: Path, loops: int, args: argparse.Namespace) -> list[bool]:
    results: list[bool] = []
    print(f"CPU-bound: {args.cpu_records} records, a job of {loops} loop turns (~1 ms)")
    ratio, two, one = median_ratio(
        cpu, ("process", 2), ("process", 1), args.cpu_records, args.rounds
    )
    results.append(
        report(
            "  process, 2 workers vs 1 worker",
            ratio,
            1.7,
            f"({args.cpu_records / two:,.0f} vs {args.cpu_records / one:,.0f} records/s)",
        )
    )
    ratio, dask, serial = median_ratio(
        cpu, ("dask", 2), ("thread", 1), args.cpu_records, args.rounds
    )
    results.append(
        report(
            "  dask LocalCluster(2) vs serial (thread, 1 worker)",
            ratio,
            1.6,
            f"({args.cpu_records / dask:,.0f} vs {args.cpu_records / serial:,.0f} records/s)",
        )
    )

    return results


def trivial_part(root: Path, trivial: Path, args: argparse.Namespace) -> list[bool]:
    results: list[bool] = []
    count = args.trivial_records
    print(
        f"Trivial steps: `choreo run` over {count:,} JSON lines (one job returning a "
        "constant); throughput past start-up: (N - 1,000) / (time(N) - time(1,000))"
    )
    big = write_lines(root / "big.jsonl", count)
    small = write_lines(root / "small.jsonl", 1000)
    rates: dict[str, list[float]] = {"thread": [], "process": [], "dask": []}
    startups: dict[str, list[float]] = {"thread": [], "process": [], "dask": []}
    for _ in range(args.rounds):
        for name in rates:
            workers = 1 if name == "thread" else 2
            short = cli_seconds(trivial, small, name, workers)
            long = cli_seconds(trivial, big, name, workers)
            rates[name].append((count - 1000) / max(long - short, 1e-9))
            startups[name].append(short)
    thread_rate = statistics.median(rates["thread"])
    for name in ("process", "dask"):
        rate = statistics.median(rates[name])
        results.append(
            report(
                f"  {name} (2 workers) vs thread (1 worker, its default)",
                rate / thread_rate,
                0.5,
                f"({rate:,.0f} vs {thread_rate:,.0f} records/s; a 1,000-record run "
                f"takes {statistics.median(startups[name]):.2f} s vs "
                f"{statistics.median(startups['thread']):.2f} s)",
            )
        )

    print(f"  (library level, run_many over {count:,} Records, no JSON; no target)")
    for name in ("process", "dask"):
        ratio, other, thread = median_ratio(trivial, (name, 2), ("thread", 1), count, 1)
        print(
            f"    {name}: {ratio:.2f}x the thread executor "
            f"({count / other:,.0f} vs {count / thread:,.0f} records/s)"
        )

    print(
        f"  (library level, run_lines over the {count:,} JSON lines, results to /dev/null: the "
        "fused loop `choreo run` uses; medians of the rounds; no target)"
    )
    thread_runs = []
    for name in ("process", "dask"):
        runs = []
        for _ in range(args.rounds):
            thread_runs.append(lines_seconds(trivial, "thread", 1, big))
            runs.append(lines_seconds(trivial, name, 2, big))
        thread = statistics.median(thread_runs)
        other = statistics.median(runs)
        print(
            f"    {name}: {thread / other:.2f}x the thread executor "
            f"({count / other:,.0f} vs {count / thread:,.0f} records/s; "
            f"{name} {min(runs):.2f}-{max(runs):.2f} s)"
        )

    return results


def lines_seconds(path: Path, executor: str, workers: int, data: Path) -> float:
    """Seconds of ``run_lines`` over the lines of ``data`` (start-up left out), as `choreo run`
    runs it: lines written with the writer's clean-line template, to /dev/null."""
    from choreo_cli.jsonl.reader import JsonlReader
    from choreo_cli.jsonl.writer import build_writer

    with build_executor(executor, load_pipeline(path), workers=workers) as running:
        runner = running  # every executor offers run_lines (the thread executor with one worker)
        writer = build_writer(os.devnull, include_input=False, include_data=False, on_written=None)
        clean_line = writer.clean_line(runner.clean_steps())
        with data.open("rb") as stream:
            started = time.perf_counter()
            for _ in runner.run_lines(
                JsonlReader(stream).iter_line_lists(),
                clean_line=clean_line,
                put=writer.put,
                emit=writer.write,
            ):
                writer.drain_if_full()
            writer.close()
            return time.perf_counter() - started


def io_part(nap: Path, async_nap: Path, args: argparse.Namespace) -> list[bool]:
    results: list[bool] = []
    count = args.io_records
    workers = 64
    ideal = count * 0.005 / workers
    print(f"I/O-bound: {count} records, the job sleeps 5 ms, {workers} workers")
    # Rounds alternate sync and async: on a shared machine a slow spell then weighs on both.
    runs: dict[str, list[float]] = {"sync": [], "async": []}
    for _ in range(args.rounds):
        for label, path in (("sync", nap), ("async", async_nap)):
            runs[label].append(timed_run(path, "thread", workers, count)[1])
    for label, times in runs.items():
        measured = statistics.median(times)
        results.append(
            report(
                f"  thread executor, {label} job: efficiency ideal/measured",
                ideal / measured,
                0.9,
                f"(ideal {ideal:.3f} s, measured {measured:.3f} s; "
                f"rounds {ideal / max(times):.2f}-{ideal / min(times):.2f})",
            )
        )
    # What asyncio itself reaches here, without choreo: one loop, 64 tasks at once, each
    # sleeping 5 ms. The async figure above cannot be better than this.
    plain = statistics.median(_plain_asyncio(count, workers) for _ in range(args.rounds))
    print(
        f"  baseline, plain asyncio (one loop, no choreo): efficiency {ideal / plain:.2f}x "
        f"(measured {plain:.3f} s)"
    )
    return results


def _plain_asyncio(count: int, workers: int) -> float:
    import asyncio

    async def main() -> float:
        limit = asyncio.Semaphore(workers)

        async def one() -> None:
            async with limit:
                await asyncio.sleep(0.005)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return time.perf_counter() - started

    return asyncio.run(main())


if __name__ == "__main__":
    sys.exit(main())
