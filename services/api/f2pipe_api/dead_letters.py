"""/v1/dead-letters: the newest dead letters of `iot-dead-letter` (KAFKA_DEADLETTER_TOPIC),
so an operator sees why a controller's data is missing without a Kafka client.

`KafkaDeadLetters` reads without a consumer group's offsets: it assigns every partition
itself, starts `window` records before the high watermark (API_DEAD_LETTER_WINDOW) and reads
to the end or to the deadline (API_DEAD_LETTER_TIMEOUT), in a thread (confluent-kafka blocks).
Memory stays bounded whatever the topic holds: librdkafka's fetch queue is capped, and only
the `limit` newest matches are kept, each with a 256-byte preview of its payload, never the
payload itself. A record that is not a dead letter f2pipe wrote is counted (`skipped`) and
passed over: one bad record must not hide the others.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from f2pipe_api.controllers import MAC_DESCRIPTION, MAC_PATTERN
from f2pipe_api.deps import AUTH_REASONS, DeadLettersDep, Viewer
from f2pipe_api.ports import KafkaUnavailable
from f2pipe_api.problems import PROBLEMS
from f2pipe_shared.deadletters import DeadLetter, Reason, Stage
from f2pipe_shared.kafka import AuthFailureLog, client_config
from f2pipe_shared.problems import ProblemError
from f2pipe_shared.settings import KafkaSettings
from f2pipe_shared.topics import device_level, mac_from_cn, normalize_mac

log = logging.getLogger(__name__)

PREVIEW_BYTES = 256
MAX_LIMIT = 500
# At most this many listings read Kafka at once: each holds a consumer and a fetch queue.
CONCURRENT_SCANS = 2
_CONSUME_BATCH = 200
_QUEUE_KBYTES = 16 * 1024  # librdkafka's prefetch queue, per listing
GROUP = "f2pipe-api-dead-letters"

router = APIRouter(tags=["dead letters"])


class DeadLetterEntry(BaseModel):
    stage: Stage
    reason: Reason
    detail: str = Field(examples=["connector J2 has no pin at position 3"])
    mac: str | None = Field(
        description="the controller, from the MQTT topic (null when the topic names none)",
        examples=["aabbccddee01"],
    )
    mqtt_topic: str | None = Field(examples=["tele/f2-aabbccddee01/sensor-mode/J2/sensor-3"])
    source_topic: str | None = Field(description="the Kafka topic the stage was reading")
    failed_at: datetime
    size: int = Field(description="the original payload's size in bytes")
    sha256: str | None = Field(
        description="the original's SHA-256 when the dead letter carries only its beginning"
    )
    preview_hex: str = Field(
        description=f"the payload's first {PREVIEW_BYTES} bytes at most, hex", examples=["7b2274"]
    )
    preview_text: str = Field(
        description="the same bytes as UTF-8, anything else as \\xNN", examples=['{"t']
    )
    truncated: bool = Field(description="the payload is longer than the preview")
    partition: int = Field(description="where it is on the dead-letter topic")
    offset: int


class DeadLetterPage(BaseModel):
    items: list[DeadLetterEntry] = Field(description="newest first")
    scanned: int = Field(description="records read: the newest `window` of each partition")
    skipped: int = Field(description="records on the topic that are not dead letters: passed over")
    window: int = Field(description="records per partition read at most (API_DEAD_LETTER_WINDOW)")
    complete: bool = Field(
        description="every partition was read to its end (false: the deadline came first)"
    )


@dataclass(frozen=True)
class DeadLetterQuery:
    mac: str | None = None
    reason: Reason | None = None
    stage: Stage | None = None
    limit: int = 100

    def matches(self, letter: DeadLetter, mac: str | None) -> bool:
        return (
            (self.mac is None or mac == self.mac)
            and (self.reason is None or letter.reason == self.reason)
            and (self.stage is None or letter.stage == self.stage)
        )


def mac_of(mqtt_topic: str | None) -> str | None:
    """The controller a topic names (`…/f2-<mac>/…`), if it names one."""
    if not mqtt_topic:
        return None
    try:
        return mac_from_cn(device_level(mqtt_topic))
    except ValueError:
        return None


def entry(letter: DeadLetter, partition: int, offset: int) -> DeadLetterEntry:
    head = letter.original[:PREVIEW_BYTES]
    size = len(letter.original) if letter.original_size is None else letter.original_size
    return DeadLetterEntry(
        stage=letter.stage,
        reason=letter.reason,
        detail=letter.detail,
        mac=mac_of(letter.mqtt_topic),
        mqtt_topic=letter.mqtt_topic,
        source_topic=letter.source_topic,
        failed_at=letter.failed_at,
        size=size,
        sha256=letter.original_sha256,
        preview_hex=head.hex(),
        preview_text=head.decode("utf-8", "backslashreplace"),
        truncated=size > len(head),
        partition=partition,
        offset=offset,
    )


@dataclass
class Newest:
    """The `limit` newest matches seen so far (a min-heap: the oldest kept is dropped first)."""

    query: DeadLetterQuery
    heap: list[tuple[datetime, int, int, DeadLetterEntry]] = field(default_factory=list)
    scanned: int = 0
    skipped: int = 0

    def add(self, message: Message) -> None:
        self.scanned += 1
        try:
            letter = DeadLetter.from_kafka(message.value(), _headers(message))
        except ValueError:  # pydantic's ValidationError, a header that is not UTF-8
            self.skipped += 1
            return
        mac = mac_of(letter.mqtt_topic)
        if not self.query.matches(letter, mac):
            return
        partition, offset = message.partition(), message.offset()
        assert partition is not None
        assert offset is not None
        # A producer other than ours may write a naive time: read it as UTC, comparable.
        at = letter.failed_at if letter.failed_at.tzinfo else letter.failed_at.replace(tzinfo=UTC)
        item = (at, partition, offset, entry(letter, partition, offset))
        if len(self.heap) < self.query.limit:
            heapq.heappush(self.heap, item)
        elif item[:3] > self.heap[0][:3]:
            heapq.heapreplace(self.heap, item)

    def items(self) -> list[DeadLetterEntry]:
        return [e for *_, e in sorted(self.heap, key=lambda i: i[:3], reverse=True)]


class KafkaDeadLetters:
    """The dead-letter topic read from its end; a listing is one short-lived consumer."""

    def __init__(self, settings: KafkaSettings, *, window: int, timeout: float) -> None:
        self.topic = settings.kafka_deadletter_topic
        self.window = window
        self.timeout = timeout
        config = client_config(settings)
        # One error_cb for every listing: a refused login is logged once a minute, not per call.
        self.auth: AuthFailureLog = config["error_cb"]
        self.config: dict[str, Any] = {
            **config,
            "error_cb": self._on_error,
            # confluent-kafka wants a group; it is never joined and nothing is committed to it.
            "group.id": GROUP,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "queued.max.messages.kbytes": _QUEUE_KBYTES,
        }
        self.scans = asyncio.Semaphore(CONCURRENT_SCANS)

    def _on_error(self, error: KafkaError) -> None:
        # librdkafka looks for the group's coordinator though the group is never joined; a
        # broker whose ACLs give the api no group (docs/security.md) refuses that, harmlessly.
        if error.code() != KafkaError.GROUP_AUTHORIZATION_FAILED:
            self.auth(error)

    async def recent(self, query: DeadLetterQuery) -> DeadLetterPage:
        async with self.scans:
            return await asyncio.to_thread(self.scan, query)

    def scan(self, query: DeadLetterQuery) -> DeadLetterPage:
        deadline = time.monotonic() + self.timeout
        newest = Newest(query)
        self.auth.seen = False  # this listing's refusal, not an old one
        consumer = Consumer(self.config)
        try:
            starts = self._starts(consumer, deadline)
            complete = self._read(consumer, starts, newest, deadline)
        except KafkaException as exc:
            consumer.poll(0.2)  # serves error_cb: was it a refused login?
            if self.auth.seen:
                raise KafkaUnavailable(
                    "Kafka refused the api's login (KAFKA_SASL_*, KAFKA_SSL_CA_FILE)"
                ) from None
            raise KafkaUnavailable(f"Kafka did not answer ({_name(exc)})") from None
        finally:
            consumer.close()
        if newest.skipped:
            log.warning(
                "records on the dead-letter topic are not dead letters",
                extra={"topic": self.topic, "skipped": newest.skipped},
            )
        return DeadLetterPage(
            items=newest.items(),
            scanned=newest.scanned,
            skipped=newest.skipped,
            window=self.window,
            complete=complete,
        )

    def _starts(self, consumer: Consumer, deadline: float) -> dict[int, int]:
        """Per partition: the offset to start at, `window` records before the high watermark."""
        metadata = consumer.list_topics(self.topic, timeout=_left(deadline))
        topic = metadata.topics.get(self.topic)
        if topic is None or _no_such_topic(topic.error):
            return {}  # nothing was ever dead-lettered
        if topic.error is not None:
            raise KafkaException(topic.error)
        starts = {}
        for partition in topic.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=_left(deadline), cached=False
            )
            starts[partition] = max(low, high - self.window)
        return starts

    def _read(
        self, consumer: Consumer, starts: dict[int, int], newest: Newest, deadline: float
    ) -> bool:
        """Read each partition to its end; False when the deadline came first.

        The end is where Kafka says so (partition EOF), not the high watermark read before:
        a broker may report it late (Tansu trails by a batch, docs/architecture.md), and a
        partition it calls empty is read all the same."""
        consumer.assign([TopicPartition(self.topic, p, start) for p, start in starts.items()])
        pending = set(starts)
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(_CONSUME_BATCH, timeout=min(0.5, _left(deadline))):
                error = message.error()
                if error is None:
                    newest.add(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
        return not pending


def _headers(message: Message) -> list[tuple[str, bytes | None]]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(name, value.encode() if isinstance(value, str) else value) for name, value in pairs]


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.1)


def _no_such_topic(error: KafkaError | None) -> bool:
    return error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def _name(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.name() if isinstance(error, KafkaError) else type(exc).__name__


@router.get(
    "/v1/dead-letters",
    response_model=DeadLetterPage,
    responses=PROBLEMS.responses(
        *AUTH_REASONS, "invalid_mac", "invalid_request", "kafka_unavailable"
    ),
    summary="The newest dead letters (viewer): why a controller's data is missing",
)
async def list_dead_letters(
    caller: Viewer,
    reader: DeadLettersDep,
    *,
    mac: Annotated[str | None, Query(pattern=MAC_PATTERN, description=MAC_DESCRIPTION)] = None,
    reason: Annotated[Reason | None, Query(description="only this reason")] = None,
    stage: Annotated[Stage | None, Query(description="only from this stage")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> DeadLetterPage:
    if reader is None:
        raise ProblemError("kafka_unavailable", "The api has no Kafka to read dead letters from.")
    query = DeadLetterQuery(
        mac=None if mac is None else normalize_mac(mac), reason=reason, stage=stage, limit=limit
    )
    try:
        return await reader.recent(query)
    except KafkaUnavailable as exc:
        raise ProblemError(
            "kafka_unavailable", f"{exc}; retry later.", headers={"Retry-After": "5"}
        ) from None
