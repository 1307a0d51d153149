"""Loaded (as sitecustomize, via PYTHONPATH) by the Python processes of a simulated host with a skewed clock
(tests/hosts.py). libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 answers the call behind CPython's
time.sleep, clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), with EINVAL; with the monotonic clock faked instead,
every timed wait of a thread (Event.wait, Lock.acquire(timeout), queue.get(timeout)) never returns. So the
monotonic clock stays real and time.sleep waits in select(), which libfaketime passes through. Nothing else of the
process changes: its wall clock (time.time, datetime.now) carries the host's offset."""

import select
import time

_monotonic = time.monotonic


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = _monotonic() + seconds
    while True:
        left = deadline - _monotonic()
        if left <= 0:
            return
        select.select([], [], [], left)


time.sleep = _sleep
