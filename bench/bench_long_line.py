"""Peak memory of `choreo run` over an input with one very long line, against a small input.

A line longer than ``--max-line-bytes`` (64 MiB by default) is an invalid record whose
bytes are dropped as they are read: the run's peak RSS must stay far below the line's
size. Writes 1,000 small records with one line of ``--line-mib`` MiB (default 300) in
the middle, runs `choreo run` on it (as ``--input FILE``, and through a pipe on stdin),
checks the long line's result, and prints each peak RSS in MiB and its ratio to the
peak RSS of a run over the 1,000 small records alone.

    python bench/bench_long_line.py [--line-mib 300] [--executor thread]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import orjson

PIPELINE = """
version: 1
name: long-line
steps:
  - name: keep
    job: steps:keep
"""

STEPS = """
def keep(ctx, record):
    return None
"""
SMALL = 1000
CHOREO = Path(sys.executable).parent / "choreo"


def write_input(path: Path, *, line_mib: int) -> int:
    """1,000 small records, with a line of ``line_mib`` MiB in the middle (when > 0);
    the long line's number."""
    middle = SMALL // 2
    block = b"x" * (1024 * 1024)
    with open(path, "wb") as f:
        for i in range(SMALL):
            if i == middle and line_mib:
                f.write(b'"')
                for _ in range(line_mib):
                    f.write(block)
                f.write(b'"\n')
            f.write(orjson.dumps({"id": i}) + b"\n")
    return middle + 1


def peak_rss(command: list[str], *, source: Path, pipe: bool, out: Path) -> tuple[int, float]:
    """Run ``command`` reading ``source`` (as a pipe from ``cat`` when ``pipe``, else as
    its stdin file); its exit code and peak RSS in MiB."""
    with open(out, "wb") as dst:
        if pipe:
            feeder = subprocess.Popen(["cat", str(source)], stdout=subprocess.PIPE)
            proc = subprocess.Popen(command, stdin=feeder.stdout, stdout=dst)
            assert feeder.stdout is not None
            feeder.stdout.close()
        else:
            with open(source, "rb") as src:
                proc = subprocess.Popen(command, stdin=src, stdout=dst)
        _, status, usage = os.wait4(proc.pid, 0)
        if pipe:
            feeder.wait()
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--line-mib", type=int, default=300)
    parser.add_argument("--executor", default="thread")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pipeline.yaml").write_text(textwrap.dedent(PIPELINE))
        (root / "steps.py").write_text(textwrap.dedent(STEPS))
        small, big = root / "small.jsonl", root / "big.jsonl"
        write_input(small, line_mib=0)
        long_line = write_input(big, line_mib=args.line_mib)
        command = [str(CHOREO), "run", str(root / "pipeline.yaml"), "-q"]
        command += ["--executor", args.executor]
        os.chdir(root)
        code, base = peak_rss(command, source=small, pipe=False, out=root / "small.out")
        if code != 0:
            raise SystemExit(f"choreo run over the small input exited {code}")
        print(f"small input ({SMALL:,} records): peak RSS {base:.1f} MiB")
        for pipe in (False, True):
            how = "through a pipe" if pipe else "from a file"
            code, rss = peak_rss(command, source=big, pipe=pipe, out=root / "big.out")
            lines = (root / "big.out").read_bytes().splitlines()
            results = [orjson.loads(line) for line in lines]
            invalid = [r for r in results if r["status"] == "invalid"]
            assert code == 1, f"exit {code}, expected 1 (one invalid record)"
            assert len(results) == SMALL + 1, len(results)
            assert [r["line"] for r in invalid] == [long_line], invalid
            message = invalid[0]["error"]["message"]
            print(
                f"one {args.line_mib} MiB line, {how}: peak RSS {rss:.1f} MiB, "
                f"ratio {rss / base:.2f} to the small input; exit {code}, "
                f"line {long_line}: {message!r}"
            )


if __name__ == "__main__":
    main()
