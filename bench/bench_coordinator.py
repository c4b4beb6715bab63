"""Coordinator hot loop vs a hand-written loop calling the same four functions.

Prints the time of each and their ratio; both are measured in this run, alternately,
and the median of the ratios is reported (the machines are shared and noisy).

    python bench/bench_coordinator.py [--records N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from choreo_cli import Coordinator, Skip, Step


def exists(ctx: Any, record: dict[str, Any]) -> None:
    return None


def create(ctx: Any, record: dict[str, Any]) -> int:
    return 1


def line_exists(ctx: Any, record: dict[str, Any]) -> None:
    return None


def create_line(ctx: Any, record: dict[str, Any]) -> int:
    return 2


def hand_loop(records: list[dict[str, Any]]) -> int:
    """What a careful user would write without choreo: try/except around each call."""
    ok = 0
    ctx = None
    for record in records:
        try:
            exists(ctx, record)
        except Skip:
            pass
        else:
            try:
                create(ctx, record)
            except Exception:
                continue
        try:
            line_exists(ctx, record)
        except Skip:
            pass
        else:
            try:
                create_line(ctx, record)
            except Exception:
                continue
        ok += 1
    return ok


def coordinator_loop(records: list[dict[str, Any]], *, timings: bool = True) -> int:
    coordinator = Coordinator(workers=1, timings=timings)
    coordinator.add_step(Step("create statement", job=create, precheck=exists))
    coordinator.add_step(Step("create statement line", job=create_line, precheck=line_exists))
    ok = 0
    with coordinator:
        for result in coordinator.run_many(records):
            if result.status == "succeeded":
                ok += 1
    return ok


def timed(fn: Callable[[list[dict[str, Any]]], int], records: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    count = fn(records)
    elapsed = time.perf_counter() - started
    assert count == len(records), (fn.__name__, count)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    records = [{"statement_id": f"ST-{i % 1000}", "amount": i * 0.5} for i in range(args.records)]
    ratios, untimed = [], []
    for round_no in range(args.rounds):
        hand = timed(hand_loop, records)
        ours = timed(coordinator_loop, records)
        bare = timed(lambda r: coordinator_loop(r, timings=False), records)
        ratios.append(ours / hand)
        untimed.append(bare / hand)
        print(
            f"round {round_no + 1}: hand loop {hand:.3f}s, coordinator {ours:.3f}s "
            f"({ours / hand:.2f}x), with timings=False {bare:.3f}s ({bare / hand:.2f}x)"
        )
    ratio = statistics.median(ratios)
    print(
        f"median ratio coordinator / hand loop: {ratio:.2f}x (target <= 4x) "
        f"{'ok' if ratio <= 4 else 'MISSED'}"
    )
    print(
        f"median ratio with timings=False (as choreo run uses it): "
        f"{statistics.median(untimed):.2f}x"
    )


if __name__ == "__main__":
    main()
