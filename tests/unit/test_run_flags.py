"""The run flags' interruption (core/context.py): safe from a signal handler, wakes retries."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

from choreo_cli.core.context import _RunFlags

STRESS = """
import signal, sys, threading, time
from choreo_cli.core.context import _RunFlags

flags = _RunFlags()
signal.signal(signal.SIGUSR1, lambda signum, frame: flags.interrupt("signal"))
stop = False

def pester():
    while not stop:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
        time.sleep(0.001)

thread = threading.Thread(target=pester, daemon=True)
thread.start()
end = time.monotonic() + 1.5
while time.monotonic() < end:
    for _ in range(100):
        flags.begin()
        flags.end()  # clears the interruption, where a handler can come in
stop = True
thread.join()
print("ok")
"""


def test_interrupt_from_a_signal_handler_while_a_run_ends_does_not_hang() -> None:
    """A handler that interrupts while the main thread clears the flags (a Ctrl-C as a run
    ends) once waited forever for a lock that thread held (threading.Event's)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(STRESS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def test_an_interruption_wakes_every_waiting_retry_at_once() -> None:
    flags = _RunFlags()
    flags.begin()
    woke: list[tuple[bool, float]] = []

    def wait() -> None:
        started = time.monotonic()
        woke.append((flags.wait_interrupted(30), time.monotonic() - started))

    threads = [threading.Thread(target=wait) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    flags.interrupt("stop")
    for thread in threads:
        thread.join(10)
    assert len(woke) == 4
    assert all(interrupted and seconds < 5 for interrupted, seconds in woke)
    assert flags.wait_interrupted(30) is True  # while interrupted: at once
    flags.end()


def test_a_wait_after_an_interrupted_run_ended_waits_its_time() -> None:
    flags = _RunFlags()
    flags.begin()
    flags.interrupt("stop")
    flags.end()  # the run ends: the interruption with it
    flags.begin()
    started = time.monotonic()
    assert flags.wait_interrupted(0.2) is False
    assert time.monotonic() - started >= 0.19
    assert flags.wait_interrupted(0) is False
    flags.end()
