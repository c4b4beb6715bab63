"""The metrics file's writer: atomic replacement, the periodic thread, the previous file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from choreo_cli.cli import metrics
from choreo_cli.cli.metrics import HISTOGRAM_BOUNDS, MetricsFile, Previous, replace_file
from choreo_cli.core.summary import RunSummary
from choreo_cli.core.timings import BOUNDS


def test_the_histogram_bounds_are_bounds_of_the_timings() -> None:
    assert HISTOGRAM_BOUNDS[0] == 1e-5 and HISTOGRAM_BOUNDS[-1] == 100.0
    assert set(HISTOGRAM_BOUNDS) <= set(BOUNDS)


def test_a_failed_replace_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.prom"
    path.write_text("old\n")

    def refuse(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics.os, "replace", refuse)
    with pytest.raises(OSError):
        replace_file(path, b"new\n")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["m.prom"]


def test_a_symlink_is_followed_and_kept(tmp_path: Path) -> None:
    target = tmp_path / "real.prom"
    target.write_text("old\n")
    link = tmp_path / "link.prom"
    link.symlink_to(target)
    replace_file(link, b"new\n")
    assert link.is_symlink() and target.read_text() == "new\n"


def test_a_damaged_previous_file_is_no_hint(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    path.write_bytes(b"\xff not { metrics\n")
    assert Previous.read(path) == Previous()
    assert Previous.read(tmp_path / "missing.prom") == Previous()


def test_the_thread_writes_until_stopped_and_never_over_the_final_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.prom"
    summary = RunSummary(["a"])
    file = MetricsFile(path, pipeline="p", pipeline_path=tmp_path / "p.yaml")
    written = threading.Event()
    replace = metrics.replace_file

    def spy(target: Path, data: bytes) -> None:
        replace(target, data)
        written.set()

    monkeypatch.setattr(metrics, "replace_file", spy)
    file.start(summary, interval=0.01)
    assert written.wait(10)
    names = {family.name for family in text_string_to_metric_families(path.read_text())}
    assert "choreo_run_exit_code" not in names  # not final
    summary.finish()
    file.stop()
    file.write(summary)
    names = {family.name for family in text_string_to_metric_families(path.read_text())}
    assert "choreo_run_exit_code" in names
    written.clear()
    file.write(summary, final=False)  # a late periodic write is dropped
    assert not written.is_set()


def test_the_histogram_counts_are_exact_at_its_bounds() -> None:
    summary = RunSummary(["a"])
    durations = [0.0000004, 0.00001, 0.0000101, 0.003, 0.003, 0.7, 150.0]
    for duration in durations:
        summary.times.phase("a", "job").add(duration)
    summary.finish()
    text = metrics.render(
        metrics.take_snapshot(summary, final=True), pipeline="p", last_success=None
    ).decode()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "choreo_step_duration_seconds_bucket":
                assert sample.labels["step"] == "a" and sample.labels["phase"] == "job"
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "choreo_step_duration_seconds_sum":
                assert sample.value == pytest.approx(sum(durations))
            elif sample.name == "choreo_step_duration_seconds_count":
                assert sample.value == len(durations)
    assert sorted(buckets) == [*HISTOGRAM_BOUNDS, float("inf")]
    for bound, count in buckets.items():
        assert count == sum(1 for duration in durations if duration <= bound), bound
