"""`f2pipe dev` supervises its servers too: one `dev up --detach --no-simulator` stack whose
Redis, Kafka broker (Tansu, memory storage), PostgreSQL and Mosquitto are killed with
SIGKILL in turn.

Each comes back on its port; the Kafka broker with the pipeline's topics made again at the
configured partition counts (3 and 2 here: neither Tansu's 4 nor the default 6); `dev status`
probes every server, names one that does not answer, and says when the local Kafka lost what
it held; `dev down` leaves no server process behind, restarted ones included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from f2pipe_devtools.dev.ports import Ports
from f2pipe_devtools.dev.probes import port_holder
from f2pipe_devtools.servers import port_open
from tests.integration.devkit import dev_stack_top

# One stack, one story: servers killed in turn, then `dev down` (which must come last).
pytestmark = pytest.mark.random_order(disabled=True)

PORTS = {"postgres": "postgres", "redis": "redis", "kafka": "kafka", "mosquitto": "mqtt"}
PARTITIONS = {"KAFKA_RAW_PARTITIONS": "3", "KAFKA_PROCESSED_PARTITIONS": "2"}


@dataclass
class Stack:
    state_dir: Path
    base: int
    seen_pids: set[int] = field(default_factory=set)  # every server process it ever ran

    def dev(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "f2pipe", "dev", *args, "--state-dir", str(self.state_dir)],
            capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, **PARTITIONS},
        )  # fmt: skip

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        return state

    def port(self, name: str) -> int:
        return int(getattr(Ports.from_base(self.base), PORTS[name]))

    def holder(self, name: str) -> int | None:
        """The process listening on the server's port (this user's, or any as root)."""
        found = port_holder(self.port(name))
        if found is not None:
            self.seen_pids.add(found[0])
        return found[0] if found else None

    def log(self, lines: int | None = None) -> str:
        """The detached stack's whole log, or its last `lines`."""
        text = (self.state_dir / "dev.log").read_text(errors="replace")
        return text if lines is None else "\n".join(text.splitlines()[-lines:])

    def last_status_line(self) -> str:
        lines = [line for line in self.log(400).splitlines() if line.startswith("status")]
        return lines[-1] if lines else ""


def wait_for(what: str, check: Callable[[], bool], stack: Stack, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}\n{stack.log(80)}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    top = dev_stack_top("f2pipe-dev-supervision-")
    stack = Stack(top / "state", Ports.free_base())
    up = stack.dev("up", "--detach", "--base-port", str(stack.base), "--controllers", "2",
                   "--no-simulator", "--status-interval", "1")  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for name in PORTS:
            assert stack.holder(name), name
        yield stack
    finally:
        down = stack.dev("down")
        assert down.returncode == 0, down.stdout + down.stderr
        shutil.rmtree(top, ignore_errors=True)


def restarted(stack: Stack, name: str, old_pid: int) -> Callable[[], bool]:
    """Its port is listened on again, by another process."""

    def check() -> bool:
        pid = stack.holder(name)
        return pid is not None and pid != old_pid

    return check


def kill(stack: Stack, name: str) -> int:
    pid = stack.holder(name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


def hold_port(port: int, timeout: float = 10) -> socket.socket:
    """Listen on `port` as soon as the killed server let it go; never answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.bind(("127.0.0.1", port))
            break
        except OSError:
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.01)
    sock.listen()
    return sock


def test_a_killed_redis_is_restarted_and_dev_status_names_it_while_it_is_down(
    stack: Stack,
) -> None:
    pid = kill(stack, "redis")
    # A stranger takes its port at once (as a Redis started by hand would): ours stays down,
    # and `dev status` must tell a listening port from a Redis that answers.
    holder = hold_port(stack.port("redis"))
    try:
        status = stack.dev("status")
        assert status.returncode == 1, status.stdout + status.stderr
        assert re.search(r"redis\s+:\d+\s+NOT ANSWERING", status.stdout), status.stdout
        assert re.search(r"UNHEALTHY: .*redis", status.stdout), status.stdout
        wait_for("the supervisor names the port's holder",
                 lambda: f"is held by pid {os.getpid()}" in stack.log(), stack)  # fmt: skip
    finally:
        holder.close()
    wait_for("redis restarted", restarted(stack, "redis", pid), stack)
    assert "redis died (signal 9); restarting in 1 s" in stack.log()
    wait_for("the status line healthy again",
             lambda: stack.last_status_line().endswith("| all healthy"), stack)  # fmt: skip
    status = stack.dev("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"redis\s+:\d+\s+healthy \(died 1x", status.stdout), status.stdout


def test_a_killed_kafka_comes_back_with_its_topics_and_dev_status_says_what_was_lost(
    stack: Stack,
) -> None:
    pid = kill(stack, "kafka")
    wait_for("kafka restarted", restarted(stack, "kafka", pid), stack)
    wait_for("the supervisor done with it", lambda: "kafka restarted on port" in stack.log(),
             stack)  # fmt: skip
    assert "kafka died (signal 9); restarting in 1 s" in stack.log()
    # Made again before any service could produce (Tansu would make a topic 4 partitions).
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{stack.port('kafka')}"})
    metadata = admin.list_topics(timeout=10)
    counts = {name: len(topic.partitions) for name, topic in metadata.topics.items()}
    assert {"raw-iot-data": 3, "processed-iot-data": 2, "iot-dead-letter": 2}.items() <= (
        counts.items()
    ), counts
    status = stack.dev("status")
    assert re.search(r"kafka\s+:\d+\s+healthy", status.stdout), status.stdout
    lost = (
        r"the local Kafka lost what it held at (\d\d:\d\d:\d\d): readings published "
        r"before then and not yet processed are gone"
    )
    found = re.search(lost, status.stdout)
    assert found, status.stdout
    assert stack.state()["kafka_lost_at"] == [found[1]]


def test_a_killed_postgres_is_restarted_safely(stack: Stack) -> None:
    # SIGKILL to the postmaster alone: its backends outlive it and its postmaster.pid stays.
    pid = kill(stack, "postgres")
    wait_for("postgres restarted", restarted(stack, "postgres", pid), stack)
    assert "postgres did not start again" not in stack.log()
    conninfo = (f"host=127.0.0.1 port={stack.port('postgres')} user=postgres dbname=f2pipe "
                f"passfile={stack.state_dir / 'postgres' / 'pgpass'}")  # fmt: skip

    def accepting() -> bool:
        # Listening is not accepting: it replays its WAL first ("not yet accepting").
        try:
            with psycopg.connect(conninfo, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    wait_for("postgres accepting connections after its recovery", accepting, stack)
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM registry.devices").fetchone()
        assert row is not None
        assert row[0] > 0  # the demo fleet, as it was

    def healthy() -> bool:
        return stack.dev("status").returncode == 0

    wait_for("every process healthy again", healthy, stack)


def test_the_broker_probe_is_one_quiet_session_that_follows_a_restarted_broker(
    stack: Stack,
) -> None:
    # A status line a second and several `dev status` so far: the broker logged one session
    # of the status line's probe, and no certificate-less handshake (an OpenSSL error each).
    assert "peer did not return a certificate" not in stack.log()
    assert stack.log().count("as svc-dev-watch") == 1
    assert "as svc-dev-status" in stack.log()  # `dev status`: CONNECT, CONNACK, DISCONNECT
    pid = kill(stack, "mosquitto")
    wait_for("the status line names mosquitto",
             lambda: "mosquitto" in stack.last_status_line(), stack)  # fmt: skip
    wait_for("mosquitto restarted", restarted(stack, "mosquitto", pid), stack)
    wait_for("the status line healthy again",
             lambda: stack.last_status_line().endswith("| all healthy"), stack)  # fmt: skip
    assert stack.log().count("as svc-dev-watch") == 2  # the same session, reconnected
    assert "peer did not return a certificate" not in stack.log()


def test_down_stops_every_server_it_ran_restarted_ones_too(stack: Stack) -> None:
    ports = stack.state()["ports"]
    for name in PORTS:
        stack.holder(name)
    assert len(stack.seen_pids) >= 8  # four servers, each restarted
    # What `dev down` would stop if `dev up` were gone (Mosquitto: run-broker.sh, its parent).
    servers = stack.state()["servers"]
    for name in ("postgres", "redis", "kafka"):
        assert servers[name]["pid"] == stack.holder(name), name
    down = stack.dev("down")
    assert down.returncode == 0, down.stdout + down.stderr
    alive = [pid for pid in stack.seen_pids if Path(f"/proc/{pid}").exists()]
    assert not alive, f"still running: {alive}"
    held = {name: port for name, port in ports.items() if port_open("127.0.0.1", port)}
    assert not held
