"""Controller connectivity through a real `f2pipe processor` worker (Kafka, PostgreSQL, Redis):
a simulated controller stops -> offline within the bound; starts -> online; the worker
killed and restarted in between -> no spurious transition. And /latest keeps the value with
the newest device timestamp when an older message arrives after it."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import pytest
from confluent_kafka import Producer

from f2pipe_devtools.testkit.samples import Slot, load_fleet, make_sample
from f2pipe_shared.records import Event, encode_raw_batch
from tests.integration.test_processor_worker import (  # noqa: F401 (fixtures)
    TopicReader,
    Worker,
    partition_of,
    start_worker,
    worker_env,
)

pytestmark = pytest.mark.integration

TIMEOUT = 3.0  # CONNECTIVITY_TIMEOUT in these tests
BOUND = TIMEOUT + 10  # the detection bound
SEND_EVERY = 0.4  # seconds between a simulated controller's messages


class SimController:
    """A controller as the processor sees it: one sensor's messages in raw-iot-data, received
    "now" by the bridge, until stopped."""

    def __init__(self, producer: Producer, topic: str, slot: Slot) -> None:
        self.producer, self.topic, self.slot = producer, topic, slot
        self.running = threading.Event()
        self.last_sent_us = 0
        self.sent_us: list[int] = []
        self.rng = random.Random(slot.device_id)
        self._partition: int | None = None

    def send(self) -> None:
        now_us = int(time.time() * 1e6)
        sample = make_sample(self.slot, now_us, self.rng)
        if self._partition is None:
            self._partition = partition_of(sample)
        value = encode_raw_batch([sample.message])
        self.producer.produce(self.topic, value=value, partition=self._partition)
        self.producer.flush(5)
        self.last_sent_us = now_us
        self.sent_us.append(now_us)


class Seen(NamedTuple):
    event: Event
    at: float  # wall clock when the test read it


class Fleet:
    """The simulated controllers, one thread sending for all that run."""

    def __init__(self, controllers: list[SimController]) -> None:
        self.controllers = controllers
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for c in self.controllers:
                if c.running.is_set():
                    c.send()
            time.sleep(SEND_EVERY)


class Transitions:
    """Connectivity events in processed-iot-data, with when they were read."""

    def __init__(self, reader: TopicReader) -> None:
        self.reader = reader
        self.seen: list[Seen] = []
        self._read = 0

    def poll(self, seconds: float = 0.3) -> None:
        self.reader.poll(seconds)
        now = time.time()
        for batch in self.reader.batches[self._read :]:
            self.seen += [Seen(e, now) for e in batch.events if e.kind == "connectivity"]
        self._read = len(self.reader.batches)

    def of(self, device: int) -> list[tuple[int, str]]:
        """Distinct (timestamp, status) of a controller, in time order: what the sink stores
        (telemetry.events' key is (timestamp, device, kind))."""
        found = {(s.event.timestamp_us, s.event.data["status"]) for s in self.seen
                 if s.event.device_id == device}  # fmt: skip
        return sorted(found)

    def wait_for(self, device: int, status: str, after_us: int, within: float) -> Seen:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.poll()
            for s in self.seen:
                e = s.event
                if (
                    e.device_id == device
                    and e.data["status"] == status
                    and e.timestamp_us > after_us
                ):
                    return s
        raise AssertionError(f"no {status} event for controller {device} within {within} s")


def controller_ids(conninfo: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT mac, id FROM registry.devices WHERE mac IS NOT NULL").fetchall()
    return dict(rows)


def test_offline_within_the_bound_online_again_and_no_spurious_transition_on_restart(
    worker_env: dict[str, str],  # noqa: F811
    start_worker: Callable[[str], Worker],  # noqa: F811
) -> None:
    env = worker_env
    env["CONNECTIVITY_TIMEOUT"] = str(TIMEOUT)
    fleet_slots = load_fleet(env["CONNINFO"])
    ids = controller_ids(env["CONNINFO"])
    by_mac: dict[str, Slot] = {}
    for slot in fleet_slots:
        if slot.stem == "sensor":
            by_mac.setdefault(slot.mac, slot)
    mac_a, mac_b = sorted(by_mac)[:2]
    a_id, b_id = ids[mac_a], ids[mac_b]
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
    a = SimController(producer, env["KAFKA_RAW_TOPIC"], by_mac[mac_a])
    b = SimController(producer, env["KAFKA_RAW_TOPIC"], by_mac[mac_b])
    fleet = Fleet([a, b])
    a.running.set()
    b.running.set()
    fleet.thread.start()
    transitions = Transitions(
        TopicReader(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_PROCESSED_TOPIC"])
    )
    lags: list[float] = []
    try:
        worker = start_worker("processor-1")
        transitions.wait_for(a_id, "online", 0, 60)
        transitions.wait_for(b_id, "online", 0, 60)
        for trial in range(3):
            # Stop A: offline at last_seen + timeout, read within the bound.
            a.running.clear()
            time.sleep(SEND_EVERY * 2)  # the thread's send in progress, if any, is done
            stopped_us = a.last_sent_us
            offline = transitions.wait_for(a_id, "offline", stopped_us, BOUND + 5)
            assert offline.event.timestamp_us == stopped_us + int(TIMEOUT * 1e6)
            assert offline.event.data["last_seen"].endswith(f"{stopped_us % 1_000_000:06d}")
            lags.append(offline.at - stopped_us / 1e6)
            if trial == 1:
                # Killed while A is offline and B online: nothing graceful, then a new worker.
                worker.kill()
                time.sleep(1.0)
                worker = start_worker(f"processor-{trial + 2}")
                time.sleep(TIMEOUT + 3)  # long enough for a spurious offline of B to show
            # Start A again: online at its first message's received time.
            a.running.set()
            online = transitions.wait_for(a_id, "online", stopped_us, BOUND)
            assert online.event.timestamp_us > stopped_us + int(TIMEOUT * 1e6)
            time.sleep(1.0)
        time.sleep(TIMEOUT + 2)
        transitions.poll(1.0)
        statuses_a = [status for _, status in transitions.of(a_id)]
        assert statuses_a == ["online"] + ["offline", "online"] * 3, transitions.of(a_id)
        # B never stopped (the test's own sender kept its messages under the timeout apart):
        # the restart must not have made it offline.
        gaps = [(y - x) / 1e6 for x, y in zip(b.sent_us, b.sent_us[1:], strict=False)]
        assert max(gaps) < TIMEOUT, f"the test's sender stalled: {max(gaps):.1f} s"
        assert [status for _, status in transitions.of(b_id)] == ["online"], transitions.of(b_id)
        assert max(lags) <= BOUND, lags
        status, text = worker.get("/metrics")
        assert status == 200
        owned_online = [line for line in text.splitlines()
                        if line.startswith("f2pipe_processor_controllers_online ")]  # fmt: skip
        assert owned_online, "no gauge of online controllers"
        print(
            f"detection lag (last message -> offline event read), s: {[round(x, 2) for x in lags]}"
        )
    finally:
        fleet.stop.set()
        fleet.thread.join(5)
        transitions.reader.close()


def test_latest_keeps_the_newest_device_timestamp_when_an_older_message_arrives_last(
    worker_env: dict[str, str],  # noqa: F811
    start_worker: Callable[[str], Worker],  # noqa: F811
) -> None:
    env = worker_env
    slot = next(s for s in load_fleet(env["CONNINFO"]) if s.stem == "sensor")
    rng = random.Random(3)
    now_us = int(time.time() * 1e6)
    newer = make_sample(slot, now_us - 10_000_000, rng)
    older = make_sample(slot, now_us - 60_000_000, rng)  # sent second, arrives second
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
    for sample in (newer, older):
        producer.produce(env["KAFKA_RAW_TOPIC"], value=encode_raw_batch([sample.message]),
                         partition=partition_of(sample))  # fmt: skip
        producer.flush(5)
    reader = TopicReader(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_PROCESSED_TOPIC"])
    worker = start_worker("processor-latest")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(reader.readings()) < 2 * len(newer.readings):
            reader.poll(0.5)
        assert len(reader.readings()) == 2 * len(newer.readings), worker.tail()
        status, body = worker.get(f"/latest/{slot.device_id}")
        assert status == 200, body
        served = {p["datapoint_id"]: (p["timestamp_us"], p["value"]) for p in body["datapoints"]}
        assert served == {r.datapoint_id: (r.timestamp_us, r.value) for r in newer.readings}
    finally:
        reader.close()
