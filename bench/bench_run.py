"""`choreo run` vs a hand-written orjson loop over the same JSON Lines.

Both run as commands, alternately, on the same file: the loop parses each line with
orjson, calls the same four functions with a try/except around each, dumps a small
result line and writes it through one large buffered writer. Prints the median ratio of
wall times, and the peak RSS of `choreo run` on 1M records against 10k records. Then
the same for a re-run, where both prechecks skip their jobs with Skip (no target).

    python bench/bench_run.py [--records N] [--rounds R]
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import orjson

# choreo's promise: `choreo run` within 1.2x of a tuned hand-written loop.
TARGET = 1.2

STEPS = """
def exists(ctx, record):
    return None


def create(ctx, record):
    return 1


def line_exists(ctx, record):
    return None


def create_line(ctx, record):
    return 2
"""

PIPELINE = """
version: 1
name: bench
steps:
  - name: create statement
    precheck: steps:exists
    job: steps:create
  - name: create statement line
    precheck: steps:line_exists
    job: steps:create_line
"""


# The loop a user could write instead, tuned: orjson in and out, one large buffered
# writer. (Collecting orjson's outputs in a list before writing, as a first version of
# this loop did, is several times slower here: it is not a fair baseline.) It runs as
# its own script, as choreo does, so both pay for starting Python.
# What both loops do with each line before its steps: read, parse (or say it is invalid).
LOOP_HEAD = """
def main(path, out):
    loads, dumps, newline = orjson.loads, orjson.dumps, orjson.OPT_APPEND_NEWLINE
    count = 0
    with open(path, "rb") as src, open(out, "wb", buffering=1 << 20) as dst:
        write = dst.write
        for number, line in enumerate(src, 1):
            if not line.strip():
                continue
            try:
                record = loads(line)
            except orjson.JSONDecodeError as exc:
                write(
                    dumps({"line": number, "status": "invalid", "error": str(exc)}, option=newline)
                )
                continue
"""

HAND_LOOP = (
    """
import sys

import orjson

from steps import create, create_line, exists, line_exists


class Skip(Exception):
    pass

"""
    + LOOP_HEAD
    + """            status = "succeeded"
            try:
                exists(None, record)
            except Skip:
                pass
            else:
                try:
                    create(None, record)
                except Exception:
                    status = "failed"
            if status == "succeeded":
                try:
                    line_exists(None, record)
                except Skip:
                    pass
                else:
                    try:
                        create_line(None, record)
                    except Exception:
                        status = "failed"
            write(dumps({"index": count, "line": number, "status": status}, option=newline))
            count += 1


main(sys.argv[1], sys.argv[2])
"""
)


# A re-run: every record was loaded before, so both prechecks skip their jobs with Skip.
RERUN_STEPS = """
from choreo_cli import Skip


def exists(ctx, record):
    raise Skip(f"statement {record['statement_id']} exists")


def create(ctx, record):
    return 1


def line_exists(ctx, record):
    raise Skip("line exists")


def create_line(ctx, record):
    return 2
"""

# The hand-written loop of a re-run: as HAND_LOOP, and each line says which steps were
# skipped and why (what a log of a re-run needs).
RERUN_HAND_LOOP = (
    """
import sys

import orjson

from rerun_steps import Skip, create, create_line, exists, line_exists

STEPS = (("create statement", exists, create), ("create statement line", line_exists, create_line))

"""
    + LOOP_HEAD
    + """            status = "succeeded"
            skipped = []
            for name, precheck, job in STEPS:
                try:
                    precheck(None, record)
                except Skip as exc:
                    skipped.append({"step": name, "message": str(exc)})
                    continue
                try:
                    job(None, record)
                except Exception:
                    status = "failed"
                    break
            write(
                dumps(
                    {"index": count, "line": number, "status": status, "skipped": skipped},
                    option=newline,
                )
            )
            count += 1


main(sys.argv[1], sys.argv[2])
"""
)


class Timing(NamedTuple):
    """What one command cost: wall seconds, CPU seconds (user + system), peak RSS (KiB)."""

    wall: float
    cpu: float
    rss: int


def timed(command: list[str], out: Path, cwd: Path | None = None) -> Timing:
    """Run ``command`` with stdout to ``out``; raise SystemExit if it fails."""
    started = time.perf_counter()
    with open(out, "wb") as dst:
        proc = subprocess.Popen(command, stdout=dst, stderr=subprocess.PIPE, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        error = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{command[0]} exited {code}: {error}")
    return Timing(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def run_hand_loop(script: Path, path: Path, out: Path) -> Timing:
    """One run of the hand-written loop, started as a script."""
    devnull = Path(os.devnull)
    return timed([sys.executable, str(script), str(path), str(out)], devnull, cwd=script.parent)


def run_choreo(pipeline: Path, path: Path, out: Path) -> Timing:
    """One `choreo run`."""
    choreo = Path(sys.executable).parent / "choreo"
    return timed([str(choreo), "run", str(pipeline), "-i", str(path), "-q"], out)


def write_records(path: Path, count: int) -> None:
    with open(path, "wb") as f:
        for start in range(0, count, 10_000):
            f.write(
                b"".join(
                    orjson.dumps({"statement_id": f"ST-{i % 1000}", "amount": i * 0.5}) + b"\n"
                    for i in range(start, min(count, start + 10_000))
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "steps.py").write_text(textwrap.dedent(STEPS))
        pipeline = root / "pipeline.yaml"
        pipeline.write_text(PIPELINE)
        big, small = root / "big.jsonl", root / "small.jsonl"
        write_records(big, args.records)
        write_records(small, 10_000)
        # An installed package has its bytecode compiled (pip does it): do the same for an
        # editable install, in case PYTHONDONTWRITEBYTECODE keeps Python from writing it.
        import choreo_cli

        compileall.compile_dir(Path(choreo_cli.__file__).parent, quiet=1)
        script = root / "hand_loop.py"
        script.write_text(HAND_LOOP)

        walls: list[float] = []
        cpus: list[float] = []
        hands: list[Timing] = []
        ours: list[Timing] = []
        for round_no in range(args.rounds):
            hand = run_hand_loop(script, big, root / "hand.jsonl")
            our = run_choreo(pipeline, big, root / "ours.jsonl")
            hands.append(hand)
            ours.append(our)
            walls.append(our.wall / hand.wall)
            cpus.append(our.cpu / hand.cpu)
            print(
                f"round {round_no + 1}: hand loop {hand.wall:.2f}s, choreo run {our.wall:.2f}s, "
                f"ratio {our.wall / hand.wall:.2f}x ({args.records / our.wall:,.0f} records/s); "
                f"CPU time {hand.cpu:.2f}s vs {our.cpu:.2f}s, ratio {our.cpu / hand.cpu:.2f}x"
            )
        rss_big = ours[-1].rss
        rss_small = run_choreo(pipeline, small, root / "small.out").rss
        # The host's speed drifts from one second to the next: the ratio of the fastest
        # runs of each and the CPU-time ratio are steadier than any one round's.
        best = min(o.wall for o in ours) / min(h.wall for h in hands)
        ratio = statistics.median(walls)
        print(
            f"choreo run / hand loop (target <= {TARGET}x): median of rounds "
            f"{ratio:.2f}x (range {min(walls):.2f}-{max(walls):.2f}), "
            f"fastest vs fastest {best:.2f}x, CPU time median {statistics.median(cpus):.2f}x "
            f"{'ok' if ratio <= TARGET else 'MISSED'}"
        )
        rss_ratio = rss_big / rss_small
        print(
            f"peak RSS: {args.records:,} records {rss_big / 1024:.1f} MiB, 10,000 records "
            f"{rss_small / 1024:.1f} MiB, ratio {rss_ratio:.2f} (target <= 1.2) "
            f"{'ok' if rss_ratio <= 1.2 else 'MISSED'}"
        )
        rerun(root, big, args)


def rerun(root: Path, big: Path, args: argparse.Namespace) -> None:
    """The same comparison for a re-run, where every precheck skips its job (no target)."""
    (root / "rerun_steps.py").write_text(RERUN_STEPS)
    pipeline = root / "rerun.yaml"
    pipeline.write_text(PIPELINE.replace(": steps:", ": rerun_steps:"))
    script = root / "rerun_hand_loop.py"
    script.write_text(RERUN_HAND_LOOP)
    walls = []
    for _ in range(args.rounds):
        hand = run_hand_loop(script, big, root / "hand.jsonl")
        our = run_choreo(pipeline, big, root / "ours.jsonl")
        walls.append(our.wall / hand.wall)
    print(
        f"re-run, every job skipped: choreo run / hand loop {statistics.median(walls):.2f}x "
        f"(range {min(walls):.2f}-{max(walls):.2f}; no target; last: hand loop "
        f"{hand.wall:.2f}s, choreo run {our.wall:.2f}s)"
    )


if __name__ == "__main__":
    main()
