"""Two of each stage on one stack: two bridges in one $share group (each its own identity),
two processor workers in one Faust group, two sinks in one consumer group, all real
processes against real servers (`DevOptions.instances`, dev/instances.py).

The first test: each instance takes a share (of the MQTT messages; of the raw and processed
partitions, as their metrics show), the database holds exactly the simulator's ledger, and
either processor answers /latest for every device (test_processor_latest_workers.py covers
/latest across rebalances and a worker stopping). The second: one instance of each stage
killed with SIGKILL in turn while the simulator publishes; the killed bridge comes back (its
persistent session holds its share of the group's messages meanwhile), the killed processor
and sink stay dead and their survivors take every partition: exactly the ledger, again. The
third: a processor and a sink frozen (SIGSTOP) past their sessions, then continued. The
fourth: `f2pipe bridge --workers 2` in the bridges' place, one worker killed and started again
by the supervisor. The fifth: bridge 2 taken away mid-load and made to leave the group, as
`f2pipe dev` does for a bridge it no longer runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from f2pipe.seed import demo_mac
from f2pipe_devtools.bench.e2e import process_tree
from f2pipe_devtools.dev import http, status
from f2pipe_devtools.dev.instances import SHARED_GROUP
from f2pipe_devtools.dev.stack import DevStack
from f2pipe_devtools.servers import free_port
from f2pipe_devtools.testkit.ledger import expected_rows, read_ledger
from f2pipe_devtools.testkit.processes import frozen
from tests.integration.bridgekit import session_present
from tests.integration.scalekit import (
    Instance,
    exactly_the_ledger,
    load,
    newest_in_ledger,
    scaled_stack,
    stack_logs,
    wait_all_right,
)

pytestmark = pytest.mark.integration

STAGES = ("bridge", "processor", "sink")
SHARES = {"processor": "f2pipe_processor_assigned_partitions",
          "sink": "f2pipe_sink_assigned_partitions"}  # fmt: skip
WORK = {"bridge": "f2pipe_bridge_received_total",
        "processor": "f2pipe_processor_messages_total",
        "sink": "f2pipe_sink_rows_written_total"}  # fmt: skip
CONTROLLERS = 48
SHARING = [demo_mac(n) for n in range(1, 13)]  # each test its own devices: its own /latest
KILLING = [demo_mac(n) for n in range(13, 25)]
WORKING = [demo_mac(n) for n in range(25, 37)]
FREEZING = [demo_mac(n) for n in range(37, 49)]


@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    with scaled_stack("f2pipe-scale-out-", CONTROLLERS, instances=2) as stack:
        yield stack


def pair(stack: DevStack, stage: str) -> tuple[Instance, Instance]:
    return Instance(stack, stage), Instance(stack, f"{stage}-2")


def wait_until(done: Callable[[], bool], within: float, what: str, stack: DevStack) -> None:
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, f"not within {within:.0f} s: {what}\n{logs(stack)}"
        time.sleep(0.5)


def logs(stack: DevStack) -> str:
    return stack_logs(stack)


def partitions(stack: DevStack, stage: str) -> int:
    kafka = stack.kafka_settings()
    return kafka.kafka_raw_partitions if stage == "processor" else kafka.kafka_processed_partitions


def shares(stack: DevStack, stage: str) -> list[float]:
    return [i.metric(SHARES[stage]) for i in pair(stack, stage)]


def shared(stack: DevStack, stage: str) -> bool:
    """Both instances own partitions, together all of them."""
    assigned = shares(stack, stage)
    return min(assigned) > 0 and sum(assigned) == partitions(stack, stage)


def all_instances_running(stack: DevStack) -> None:
    """Instances the other test killed are started again (the module shares the stack), and
    each group has rebalanced over both before anything is measured."""
    for service in stack.services.values():
        if not service.running:
            service.start().wait_healthy(60)
    for stage in SHARES:
        wait_until(partial(shared, stack, stage), 60, f"both {stage}s assigned", stack)


def work(stack: DevStack, stage: str) -> list[float]:
    return [i.metric(WORK[stage]) for i in pair(stack, stage)]


def test_two_of_each_stage_share_the_work_and_either_processor_answers_latest(
    stack: DevStack, tmp_path: Path
) -> None:
    all_instances_running(stack)
    before = {stage: work(stack, stage) for stage in STAGES}
    since_us = int(time.time() * 1e6) - 1_000_000
    ledger = tmp_path / "sharing.jsonl"
    simulator = load(stack, SHARING, ledger, count=2400, rate=800)
    assert simulator.wait(120) == 0, (tmp_path / "sharing.log").read_text()[-3000:]
    exactly_the_ledger(stack, ledger, since_us, within=60)

    # Each instance of each stage took a share, as its own metrics show.
    for stage in SHARES:
        assigned = shares(stack, stage)
        assert min(assigned) > 0, f"{stage}: one instance owns every partition: {assigned}"
        assert sum(assigned) == partitions(stack, stage), (stage, assigned)
    did = {stage: [a - b for a, b in zip(work(stack, stage), before[stage], strict=True)]
           for stage in STAGES}  # fmt: skip
    assert all(min(done) > 0 for done in did.values()), f"an idle instance: {did}"
    published = expected_rows(read_ledger(ledger)).published
    # $share: the broker gives each message to one bridge of the group, never to both.
    assert sum(did["bridge"]) == published, did["bridge"]
    assert sum(did["processor"]) >= published, did["processor"]

    # Either worker answers for every device, whichever worker processed it.
    wait_all_right(list(pair(stack, "processor")), newest_in_ledger(read_ledger(ledger)), 30)


def test_kill_9_of_one_of_two_of_each_stage_mid_load_stores_exactly_the_ledger(
    stack: DevStack, tmp_path: Path
) -> None:
    all_instances_running(stack)
    bridge, processor, sink = (pair(stack, stage)[1] for stage in STAGES)
    received = sum(work(stack, "bridge"))
    since_us = int(time.time() * 1e6) - 1_000_000
    ledger = tmp_path / "killing.jsonl"
    simulator = load(stack, KILLING, ledger, count=7500, rate=500)  # 15 s: the kills take 11
    wait_until(lambda: sum(work(stack, "bridge")) > received + 500, 60, "the load", stack)

    bridge.kill9()  # its session keeps its share of the group's messages until it is back
    time.sleep(2)
    stack.services[bridge.name].start()
    for instance in (processor, sink):  # their survivors take over: not started again
        time.sleep(4)
        assert simulator.poll() is None, "the load ended before every kill"
        instance.kill9()
    assert simulator.wait(120) == 0, (tmp_path / "killing.log").read_text()[-3000:]
    exactly_the_ledger(stack, ledger, since_us, within=90)

    for stage, gauge in SHARES.items():  # the survivor owns every partition
        survivor = pair(stack, stage)[0]
        assert survivor.metric(gauge) == partitions(stack, stage), logs(stack)


def test_a_processor_and_a_sink_frozen_past_their_sessions_lose_and_double_nothing(
    stack: DevStack, tmp_path: Path
) -> None:
    """Processor 2 and sink 2 frozen (SIGSTOP) mid-load until their groups have given every
    partition to the survivors, then continued. Each wakes up holding records it had fetched
    and not committed. Whichever it meets first, its commit refused (the group moved on
    without it; counted; in most runs here) or its partitions taken back (what it held
    dropped for their new owner), nothing is lost or doubled: exactly the
    ledger is stored, the keys skip what a zombie wrote again, and what it wrote into the
    latest values lets no older value win. Both rejoin and take a share again."""
    all_instances_running(stack)
    survivors, zombies = {}, {}
    for stage in SHARES:
        survivors[stage], zombies[stage] = pair(stack, stage)
    before = {stage: zombie.metric(WORK[stage]) for stage, zombie in zombies.items()}
    since_us = int(time.time() * 1e6) - 1_000_000
    ledger = tmp_path / "freezing.jsonl"
    simulator = load(stack, FREEZING, ledger, count=9000, rate=500)  # 18 s; takeover: 5-6 s

    def at_work() -> bool:
        return all(z.metric(WORK[stage]) > before[stage] + 200 for stage, z in zombies.items())

    wait_until(at_work, 60, "both at work", stack)
    with frozen(*(zombie.pid for zombie in zombies.values())):

        def taken_over() -> bool:
            return all(survivors[s].metric(SHARES[s]) == partitions(stack, s) for s in SHARES)

        wait_until(taken_over, 60, "the survivors own every partition", stack)
        assert simulator.poll() is None, "the load ended before the group moved on"
    assert simulator.wait(120) == 0, (tmp_path / "freezing.log").read_text()[-3000:]
    exactly_the_ledger(stack, ledger, since_us, within=90)
    for stage in SHARES:
        wait_until(partial(shared, stack, stage), 60, f"the {stage} back in its group", stack)
    assert all(stack.services[z.name].running for z in zombies.values()), logs(stack)
    # What the zombie worker wrote into the latest values on waking is no older value's win.
    wait_all_right(list(pair(stack, "processor")), newest_in_ledger(read_ledger(ledger)), 30)


def two_free_ports() -> int:
    """A free port whose next one is free too (worker n listens on METRICS_PORT + n - 1)."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def children(pid: int) -> dict[int, str]:
    """Child pid -> its METRICS_PORT, of a running supervisor (its workers start no
    processes of their own)."""
    found: dict[int, str] = {}
    for child in process_tree(pid)[1:]:
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        ports = [e[13:].decode() for e in env if e.startswith(b"METRICS_PORT=")]
        found[child] = ports[0] if ports else ""
    return found


def test_bridge_workers_share_the_group_and_a_killed_one_comes_back_with_its_share(
    stack: DevStack, tmp_path: Path
) -> None:
    """`f2pipe bridge --workers 2` with the stack's two bridge identities (the stack's own
    bridges stopped meanwhile): both take messages, worker 2 killed with SIGKILL mid-load is
    started again by the supervisor, exactly the ledger is stored, SIGTERM stops it all."""
    all_instances_running(stack)
    for name in ("bridge", "bridge-2"):
        stack.services[name].stop()
    port = two_free_ports()
    env = {**stack.env(), **stack.database_env("bridge"), "BRIDGE_SHARED_GROUP": SHARED_GROUP,
           "METRICS_PORT": str(port)}  # fmt: skip
    out = (tmp_path / "workers.log").open("wb")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "f2pipe", "bridge", "--workers", "2"],
        env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    urls = [f"http://127.0.0.1:{port + n}" for n in (0, 1)]

    def received(n: int) -> float:
        return status.scrape(urls[n] + "/metrics").get("f2pipe_bridge_received_total", 0.0)

    def why() -> str:
        return (tmp_path / "workers.log").read_text()[-4000:]

    try:
        wait_until(lambda: all(http.ok(u + "/healthz") for u in urls), 60, "two workers", stack)
        since_us = int(time.time() * 1e6) - 1_000_000
        ledger = tmp_path / "workers.jsonl"
        simulator = load(stack, WORKING, ledger, count=6000, rate=500)
        wait_until(lambda: min(received(0), received(1)) > 200, 60, "both take a share", stack)
        (victim,) = [pid for pid, p in children(supervisor.pid).items() if p == str(port + 1)]
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            now = children(supervisor.pid)
            return victim not in now and str(port + 1) in now.values()

        wait_until(replaced, 20, "worker 2 started again", stack)
        wait_until(lambda: http.ok(urls[1] + "/healthz"), 60, "worker 2 healthy", stack)
        assert simulator.wait(120) == 0, why()
        exactly_the_ledger(stack, ledger, since_us, within=90)
        assert received(1) > 0, why()  # the new worker 2 delivered its session's share

        workers = list(children(supervisor.pid))
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(45) == 0, why()
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers), why()
    finally:
        if supervisor.poll() is None:
            for pid in children(supervisor.pid):
                os.kill(pid, signal.SIGKILL)
            supervisor.kill()
            supervisor.wait(10)
        out.close()


def test_a_bridge_taken_away_hands_over_its_share_when_it_leaves(
    stack: DevStack, tmp_path: Path
) -> None:
    """Bridge 2 stopped for good while the simulator publishes: its session keeps a share of
    the group's messages. `f2pipe bridge --leave 2` (what `dev up` runs for a bridge beyond
    its instances) hands that share to Kafka and ends the session: exactly the ledger is
    stored, and the broker holds no session for svc-bridge-2."""
    all_instances_running(stack)
    first = Instance(stack, "bridge")
    stack.services["bridge-2"].stop()
    try:
        before = first.metric(WORK["bridge"])
        since_us = int(time.time() * 1e6) - 1_000_000
        ledger = tmp_path / "leaving.jsonl"
        simulator = load(stack, WORKING, ledger, count=1200, rate=600)
        assert simulator.wait(120) == 0
        time.sleep(2)  # the first bridge has its share by now
        assert first.metric(WORK["bridge"]) - before < 1200, "bridge 2's session held nothing"
        assert stack.leave_bridge(2) == 0, logs(stack)
        exactly_the_ledger(stack, ledger, since_us, within=90)
        cert, key = (str(stack.issued_dir / f"bridge-2.{ext}") for ext in ("crt", "key"))
        tls = (str(stack.ca_dir / "ca.crt"), cert, key)
        assert not session_present(stack.options.ports.mqtt, "svc-bridge-2", tls=tls)
    finally:
        stack.services["bridge-2"].start().wait_healthy(60)
