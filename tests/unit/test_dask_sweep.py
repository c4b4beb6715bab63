"""The end-of-run sweep of the Dask workers' progress folders (executors/dask_attempts.py).

Every worker of a machine sweeps the run's folder as the run ends, at the same time, and
a worker that died and was restarted left its dead process's files there: a file another
worker removed first must not stop the sweep, nor leave the folder behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from choreo_cli.executors import dask_attempts
from choreo_cli.executors.dask_attempts import ProgressFile, progress_dir, sweep

CHAOS = os.environ.get("CHOREO_CHAOS") == "1"
DEAD = (999_001, 999_002)  # made-up process ids: reported dead by the fake _alive
LIVE = 999_003  # another worker, still running


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _folder_with_dead_files(run_id: str) -> tuple[Path, ProgressFile]:
    progress = ProgressFile(run_id, "tcp://127.0.0.1:1")
    assert progress.slot() is not None  # its journal file too
    folder = progress_dir(run_id)
    for pid in DEAD:
        for name in (str(pid), f"{pid}.0", f"{pid}.1"):
            (folder / name).write_bytes(b"left by a dead worker")
    return folder, progress


def _fake_alive(vanish: list[Path]) -> object:
    """``_alive`` for the made-up ids; its first call removes ``vanish`` (another worker
    sweeping at the same moment)."""

    def alive(pid: int) -> bool:
        while vanish:
            vanish.pop().unlink()
        return pid == LIVE or pid == os.getpid()

    return alive


def test_a_file_that_vanishes_midway_does_not_stop_the_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, progress = _folder_with_dead_files("vanish")
    # Listed by this sweep, then removed by another before this one reaches them.
    vanish = [folder / f"{pid}.{k}" for pid in DEAD for k in (0, 1)]
    monkeypatch.setattr(dask_attempts, "_alive", _fake_alive(vanish))
    progress.remove()
    assert not folder.exists()


def test_a_live_workers_files_stay_and_so_does_the_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, progress = _folder_with_dead_files("live")
    (folder / str(LIVE)).write_bytes(b"")
    (folder / f"{LIVE}.0").write_bytes(b"")
    vanish = [folder / f"{DEAD[0]}.1"]
    monkeypatch.setattr(dask_attempts, "_alive", _fake_alive(vanish))
    progress.remove()
    assert sorted(p.name for p in folder.iterdir()) == [str(LIVE), f"{LIVE}.0"]
    # The live worker sweeps last: the folder goes with its files.
    monkeypatch.setattr(dask_attempts, "_alive", lambda pid: False)
    sweep(folder)
    assert not folder.exists()


def test_a_folder_already_gone_is_fine(private_tmp: Path) -> None:
    sweep(private_tmp / "choreo-dask-gone")


# A worker of the run: makes its files, says so, and sweeps at the instant it is sent.
END_A_RUN = """
import sys, time
from choreo_cli.executors.dask_attempts import ProgressFile

progress = ProgressFile(sys.argv[1], "tcp://127.0.0.1:1")
progress.slot()
print("ready", flush=True)
start = float(sys.stdin.readline())
while time.time() < start:
    pass
progress.remove()
"""


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


@pytest.mark.slow
@pytest.mark.skipif(not CHAOS, reason="set CHOREO_CHAOS=1 (make chaos)")
def test_workers_sweeping_at_the_same_moment_leave_no_folder(private_tmp: Path) -> None:
    """Three worker processes end the run at one instant, with three dead workers' files in
    the folder: before, 48 of 100 such runs left it behind."""
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    left = 0
    for _ in range(100):
        run_id = uuid.uuid4().hex[:12]
        folder = progress_dir(run_id)
        folder.mkdir(mode=0o700)
        for _ in range(3):
            pid = _dead_pid()
            for name in (str(pid), f"{pid}.0", f"{pid}.1"):
                (folder / name).write_bytes(b"")
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", END_A_RUN, run_id],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        # The moment of the sweep is set once all three have their files (a start-up slowed
        # by a loaded machine past a moment set in advance found the folder swept already).
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
        start = f"{time.time() + 0.2}\n"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(start)
            worker.stdin.close()
        for worker in workers:
            assert worker.wait(30) == 0
            assert worker.stdout is not None
            worker.stdout.close()
        left += folder.exists()
    assert left == 0


def test_a_folder_swept_between_its_making_and_the_first_file_is_made_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker starting as another sweeps: the folder it just made is removed (it was
    empty) before its file is in it; it makes the folder again instead of failing."""
    run_id = uuid.uuid4().hex
    real_open = os.open
    swept = []

    def open_after_a_sweep(path: str, *args: object, **kwargs: object) -> int:
        if not swept:
            swept.append(path)
            progress_dir(run_id).rmdir()  # the other worker's sweep, in between
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dask_attempts.os, "open", open_after_a_sweep)
    progress = ProgressFile(run_id, "tcp://127.0.0.1:1")
    assert swept and progress.path.exists()
