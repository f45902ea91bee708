"""`f2pipe bridge --workers N`: a supervisor killed outright (SIGKILL, OOM) takes its workers
with it, so no bridge runs on unsupervised, holding its MQTT identity. Real processes."""

from __future__ import annotations

import subprocess
import sys
import time

from f2pipe_devtools.dev.probes import start_time

PARENT = """
import sys, time
from f2pipe_bridge.workers import spawn_worker
child = spawn_worker({}, argv=[sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's parent may be slow to reap it)."""
    return start_time(pid) is not None


def test_a_worker_gets_sigterm_when_its_supervisor_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(0.5)
        assert running(child)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(child), "the worker outlived its supervisor"
    finally:
        if parent.poll() is None:
            parent.kill()
