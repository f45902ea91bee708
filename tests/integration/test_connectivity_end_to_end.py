"""Controller connectivity through the whole stack (`f2pipe dev up`: broker, bridge, processor,
sink, PostgreSQL): the simulator's controller stops -> offline in telemetry.events and
controller_status within the bound; the processor is killed (kill -9) while it is offline;
it starts again -> online. Exactly one event per transition in the database."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from f2pipe.seed import demo_mac
from tests.integration.test_end_to_end import (  # noqa: F401 (the module's stack fixture)
    Stack,
    kill_and_wait_restarted,
    run_simulator,
    stack,
)

pytestmark = pytest.mark.integration


def connectivity(dev: Stack, mac: str) -> tuple[list[tuple[Any, ...]], tuple[Any, ...] | None]:
    """The controller's connectivity events (time order) and its controller_status row."""
    with psycopg.connect(dev.conninfo) as conn:
        events = conn.execute(
            """SELECT e.timestamp, e.data->>'status', e.data->>'last_seen'
               FROM telemetry.events e JOIN registry.devices d ON d.id = e.device_id
               WHERE d.mac = %s AND e.kind = 'connectivity' ORDER BY e.timestamp""",
            (mac,),
        ).fetchall()
        status = conn.execute(
            """SELECT s.status, s.changed_at, s.last_seen FROM telemetry.controller_status s
               JOIN registry.devices d ON d.id = s.device_id WHERE d.mac = %s""",
            (mac,),
        ).fetchone()
    return events, status


def wait(check: Callable[[], bool], within: float, what: str, dev: Stack) -> float:
    """Seconds until ``check()`` held; fails after ``within``."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if check():
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {within} s:\n{dev.log()}")


def test_a_stopped_controller_goes_offline_and_back_online_across_a_processor_kill(
    stack: Stack,  # noqa: F811
    tmp_path: Path,
) -> None:
    timeout = 3 * float(stack.env["PUBLISH_INTERVAL"])  # CONNECTIVITY_TIMEOUT unset
    mac = demo_mac(1)
    first = run_simulator(stack, [mac], tmp_path / "first.jsonl", count=40, rate=20)
    assert first.wait(120) == 0, (tmp_path / "simulator.log").read_text()[-3000:]
    stopped = time.monotonic()
    wait(lambda: [s for _, s, _ in connectivity(stack, mac)[0]] == ["online", "offline"],
         timeout + 10 + 15, "online, then offline", stack)  # fmt: skip
    lag = time.monotonic() - stopped
    events, status = connectivity(stack, mac)
    assert status is not None
    assert status[0] == "offline"
    (_, _, _), (off_at, _, last_seen) = events
    assert status[1] == off_at
    assert abs((off_at - status[2]).total_seconds() - timeout) < 1e-6  # last_seen + timeout
    assert status[2].strftime("%Y-%m-%d %H:%M:%S.%f") == last_seen
    # Detection: the timeout after the last message, a check interval, the sink's flush.
    assert lag <= timeout + 10, f"offline stored {lag:.1f} s after the simulator stopped"

    kill_and_wait_restarted(stack, "processor")
    time.sleep(timeout / 2)
    second = run_simulator(stack, [mac], tmp_path / "second.jsonl", count=40, rate=20)
    assert second.wait(120) == 0, (tmp_path / "simulator.log").read_text()[-3000:]
    wait(lambda: [s for _, s, _ in connectivity(stack, mac)[0]] == ["online", "offline", "online"],
         30, "online again", stack)  # fmt: skip
    time.sleep(3)  # a duplicate or spurious transition would land now
    events, status = connectivity(stack, mac)
    assert [s for _, s, _ in events] == ["online", "offline", "online"], events
    assert status is not None
    assert status[0] == "online"
    assert status[1] == events[-1][0]
    print(f"offline stored {lag:.1f} s after the simulator stopped (timeout {timeout:.0f} s)")
