"""`choreo run` vs a hand-written orjson loop over the same JSON Lines (issue 4).

Both run as commands, alternately, on the same file: the loop parses each line with
orjson, calls the same four functions with a try/except around each, dumps a small
result line and writes it through one large buffered writer. Prints the median ratio of
wall times, and the peak RSS of `choreo run` on 1M records against 10k records.

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

import orjson

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
HAND_LOOP = """
import sys

import orjson

from steps import create, create_line, exists, line_exists


class Skip(Exception):
    pass


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
            status = "succeeded"
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


def run_hand_loop(script: Path, path: Path, out: Path) -> float:
    """Wall time of one run of the hand-written loop, started as a script."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, str(script), str(path), str(out)], check=True, cwd=script.parent
    )
    return time.perf_counter() - started


def run_choreo(pipeline: Path, path: Path, out: Path) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one `choreo run`."""
    choreo = Path(sys.executable).parent / "choreo"
    started = time.perf_counter()
    with open(out, "wb") as dst:
        proc = subprocess.Popen(
            [str(choreo), "run", str(pipeline), "-i", str(path), "-q"],
            stdout=dst,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(
            f"choreo run exited {code}: {proc.stderr.read().decode() if proc.stderr else ''}"
        )
    return elapsed, usage.ru_maxrss


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

        ratios = []
        rss_big = rss_small = 0
        for round_no in range(args.rounds):
            hand = run_hand_loop(script, big, root / "hand.jsonl")
            ours, rss_big = run_choreo(pipeline, big, root / "ours.jsonl")
            ratios.append(ours / hand)
            print(
                f"round {round_no + 1}: hand loop {hand:.2f}s, choreo run {ours:.2f}s, "
                f"ratio {ours / hand:.2f}x ({args.records / ours:,.0f} records/s)"
            )
        _, rss_small = run_choreo(pipeline, small, root / "small.out")
        print(
            f"median ratio choreo run / hand loop: {statistics.median(ratios):.2f}x (target <= 1.5x)"
        )
        print(
            f"peak RSS: {args.records:,} records {rss_big / 1024:.1f} MiB, 10,000 records "
            f"{rss_small / 1024:.1f} MiB, ratio {rss_big / rss_small:.2f} (target <= 1.2)"
        )


if __name__ == "__main__":
    main()
