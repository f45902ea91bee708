"""The bridge: MQTT (stat/#, tele/#) -> per-partition batches -> Kafka raw-iot-data, each MQTT
message acknowledged only once Kafka confirmed the record that holds it.

One thread runs `run`: it takes what paho put in the inbox (`mqtt.py`), batches it
(`batcher.py`), produces and serves Kafka's delivery callbacks (`outbox.py`, which settles
each confirmed message), so none of that state needs a lock. Bad topics and oversize
payloads go to the dead-letter topic.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, InitVar, dataclass
from typing import Any

from f2pipe_bridge.batcher import Batcher
from f2pipe_bridge.metrics import BridgeMetrics
from f2pipe_bridge.outbox import Outbox
from f2pipe_bridge.ports import Clock, Inbound, MessageSource, RecordProducer, TopicStatus
from f2pipe_bridge.settings import BridgeSettings
from f2pipe_shared.deadletters import Reason
from f2pipe_shared.records import partition_for_device
from f2pipe_shared.settings import KafkaSettings
from f2pipe_shared.topics import TopicError, parse_topic

log = logging.getLogger(__name__)

DRAIN_AT_ONCE = 5_000
WAKE = Inbound("", b"", 0, -1, 0, -1)  # not a message: wakes the loop when it must stop
UNCONFIRMED_HEALTHY_S = 60
# While messages flow, the loop sleeps this long and then takes what gathered, instead of
# blocking on the inbox: a blocked get() is woken by each put, one thread switch and GIL
# hand-off per message against paho's thread (measured: 1.0 voluntary switches per message,
# 80-91 us of CPU each; with 5 ms, 0.23-0.27 and 57-62 us, 11,100-13,100 -> 16,300-17,100
# msg/s). An idle bridge still blocks, so the first message after a pause is taken at once.
GATHER_S = 0.005
LEAVE_QUIET_S = 3.0  # nothing received this long, everything settled: the session is empty
LEAVE_TIMEOUT_S = 300.0


@dataclass(eq=False)
class BridgeService:
    kafka: InitVar[KafkaSettings]
    settings: BridgeSettings
    mqtt: MessageSource
    producer: InitVar[RecordProducer]
    metrics: BridgeMetrics
    _: KW_ONLY
    clock: Clock = time
    # The running check of the topics (main's TopicWatch), and how to make a new producer
    # when it says the broker lost them; None: neither (unit tests).
    topics: TopicStatus | None = None
    new_producer: Callable[[], RecordProducer] | None = None

    def __post_init__(self, kafka: KafkaSettings, producer: RecordProducer) -> None:
        settings, clock = self.settings, self.clock
        self.generation = self.topics.generation if self.topics else 0
        self.partitions = _partition_count(producer, kafka.kafka_raw_topic)
        self.batcher = Batcher(
            settings.bridge_batch_max_messages, settings.bridge_batch_linger_ms / 1000, clock
        )
        self.outbox = Outbox(kafka, producer, self.metrics, clock, settle=self._settle)
        self.stopping = threading.Event()
        self.in_flight = 0  # received and not yet settled
        self.flowing = False  # the last turn took messages: gather, do not block (GATHER_S)

    def run(self) -> None:
        """Connect, pump until stopped, then hand over what is held and disconnect."""
        self.mqtt.connect()
        while not self.stopping.is_set():
            self.pump(timeout=0.1)
        self.shutdown()

    def leave(self, quiet_s: float = LEAVE_QUIET_S, timeout_s: float = LEAVE_TIMEOUT_S) -> int:
        """`--leave`: with the session's filters dropped, hand over what it holds, then end
        it. 1 if messages still arrived after `timeout_s` (a filter the settings cannot name,
        such as another group's): the session is kept, so nothing it holds is lost."""
        self.mqtt.connect()
        clock, deadline, quiet_since = self.clock, self.clock.monotonic() + timeout_s, None
        handed = 0
        while not self.stopping.is_set() and clock.monotonic() < deadline:
            taken = self.pump(timeout=0.1)
            handed += taken
            idle = self.mqtt.subscribed.is_set() and not taken and not self.in_flight
            if not idle:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = clock.monotonic()
            if quiet_since is not None and clock.monotonic() - quiet_since >= quiet_s:
                self.mqtt.end_session()
                log.info("bridge session ended", extra={"messages_handed_over": handed})
                return 0
        if not self.stopping.is_set():
            log.error(
                "messages kept arriving: the session holds a filter these settings do not "
                "name (another BRIDGE_SHARED_GROUP?); the session is kept",
                extra={"timeout_s": timeout_s},
            )
        self.shutdown()
        return 0 if self.stopping.is_set() else 1

    def pump(self, timeout: float) -> int:
        """Take what arrived, send the batches that are due, serve Kafka callbacks; how many
        messages were taken."""
        wait = self._wait(timeout)
        if self.flowing:
            time.sleep(min(wait, GATHER_S))
            wait = 0.0
        taken = self._receive(wait, limit=DRAIN_AT_ONCE)
        self.flowing = taken > 0
        for batch in self.batcher.due() + self.batcher.full():
            self.outbox.send(batch)
        self._follow_topics()
        self.outbox.resend_due()
        self.outbox.poll()
        self.mqtt.send_acks()
        self.outbox.dead_log.emit_due()
        self.metrics.in_flight.set(self.in_flight)
        return taken

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking messages, send what we hold, acknowledge what Kafka confirms."""
        self.mqtt.accepting = False
        self._receive(wait=0.0, limit=None)
        remaining = self.outbox.flush(self.batcher.drain(), timeout)
        self.mqtt.send_acks()
        self.outbox.dead_log.emit_all()
        if remaining:
            log.warning(
                "Kafka did not confirm everything before shutdown; the broker keeps those",
                extra={"records": remaining},
            )
        self.mqtt.stop()
        log.info("bridge stopped", extra={"unacknowledged": self.in_flight})

    def stop(self) -> None:
        """Called from the SIGTERM handler: the loop ends and hands over what it holds."""
        self.stopping.set()
        # Wake a get() that the signal interrupted: SimpleQueue.put is reentrant, and a
        # blocked get() was seen (rarely, under load) to wait on long after the signal.
        self.mqtt.inbox.put(WAKE)

    def health(self) -> tuple[bool, dict[str, Any]]:
        oldest = self.outbox.oldest_unconfirmed()
        waiting = 0.0 if oldest is None else self.clock.monotonic() - oldest
        connected = self.mqtt.connected.is_set()
        # Connected is not enough: until the SUBACK a first session has no subscription, and
        # the broker drops what devices publish (docker-compose starts the simulator on this).
        subscribed = connected and self.mqtt.subscribed.is_set()
        ok = subscribed and waiting < UNCONFIRMED_HEALTHY_S
        details: dict[str, Any] = {
            "mqtt_connected": connected,
            "mqtt_subscribed": subscribed,
            "in_flight": self.in_flight,
            "oldest_unconfirmed_s": round(waiting, 3),
        }
        problems = self.topics.problems() if self.topics else []
        if problems:
            details["kafka_topics"] = problems
        return ok, details

    def _follow_topics(self) -> None:
        """The broker lost the topics (restarted empty): go on with a new producer."""
        if self.topics is None or self.topics.generation == self.generation:
            return
        self.generation = self.topics.generation
        if self.new_producer is not None:
            log.warning("replacing the Kafka producer: the broker lost its producer id")
            self.outbox.replace_producer(self.new_producer())

    # --- one message ----------------------------------------------------------------------

    def handle(self, message: Inbound) -> None:
        self.in_flight += 1
        try:
            self._route(message)
        except Exception as exc:  # a bug must not let one message stop every device
            log.exception("could not handle a message", extra={"topic": message.topic[:200]})
            detail = f"bridge error: {type(exc).__name__}"
            self.outbox.dead_letter(message, Reason.invalid_record, detail)

    def _route(self, message: Inbound) -> None:
        """Into its partition's batch, or to the dead letters when it cannot be read."""
        limit = self.settings.bridge_max_payload_bytes
        if len(message.payload) > limit:
            detail = (
                f"payload of {len(message.payload)} bytes exceeds BRIDGE_MAX_PAYLOAD_BYTES={limit}"
            )
            self.outbox.dead_letter(message, Reason.oversize, detail)
            return
        try:
            topic = parse_topic(message.topic)
        except TopicError as exc:
            self.outbox.dead_letter(message, Reason.bad_topic, str(exc))
            return
        closed = self.batcher.add(partition_for_device(topic.device, self.partitions), message)
        if closed is not None:
            self.outbox.send(closed)

    def _settle(self, message: Inbound) -> None:
        """Kafka confirmed the message (or its dead letter): the MQTT side acknowledges it."""
        self.in_flight -= 1
        self.mqtt.settle(message)

    # --- the inbox ------------------------------------------------------------------------

    def _wait(self, timeout: float) -> float:
        """How long to wait for a message: `timeout`, or less when a batch is due sooner."""
        deadline = self.batcher.next_deadline()
        if deadline is None:
            return timeout
        return max(0.0, min(timeout, deadline - self.clock.monotonic()))

    def _receive(self, wait: float, limit: int | None) -> int:
        """Handle what is in the inbox: wait up to `wait` for a first message, then take up
        to `limit` more (all, for None) without waiting. How many were taken."""
        inbox = self.mqtt.inbox
        taken = 0
        try:
            message = inbox.get(timeout=wait)
            while True:
                if message is not WAKE:
                    self.handle(message)
                    taken += 1
                if limit is not None and taken > limit:
                    return taken
                message = inbox.get_nowait()
        except queue.Empty:
            pass
        return taken


def _partition_count(producer: RecordProducer, topic: str) -> int:
    metadata = producer.list_topics(topic, timeout=30)
    count = len(metadata.topics[topic].partitions)
    if count == 0:
        raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")
    return count
