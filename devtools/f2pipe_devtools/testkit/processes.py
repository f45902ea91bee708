"""Faults done to running processes by tests."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def frozen(*pids: int) -> Iterator[None]:
    """The processes stopped with SIGSTOP (a stalled VM, a paused container: their sockets stay
    open and nothing answers), continued with SIGCONT afterwards."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
