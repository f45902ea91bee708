"""The live stream's source: `processed-iot-data` (KAFKA_PROCESSED_TOPIC) read from its end,
in a thread of the api, handed to the hub (hub.py) on the event loop.

The api reads its own copy: it assigns every partition itself at the end (no consumer group
joined, nothing committed, as dead_letters.py does), so the sink's group and the pipeline's
pace are none of its business. A record that is not a processed batch is counted
(`api_stream_skipped_records_total`) and passed over; one bad record never stops the feed.
Kafka away: librdkafka reconnects by itself once assigned; before that, the assignment is
retried every few seconds. Each device id is mapped to its controller's MAC (and name) through
the registry (`registry.device_locations`, `registry.datapoints`), cached for a minute.

Memory is bounded: the thread waits for each hand-off to be delivered before it reads more,
and librdkafka's fetch queue is capped. With no client, records are read and dropped
undecoded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from f2pipe_api.hub import Hub, Item, frame
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.store import PostgresStore
from f2pipe_shared.kafka import AuthFailureLog, client_config
from f2pipe_shared.records import FramingError, ProcessedBatch, decode_processed_batch
from f2pipe_shared.settings import KafkaSettings

log = logging.getLogger(__name__)

GROUP = "f2pipe-api-stream"  # named only: librdkafka wants one; never joined
CONSUME_BATCH = 500
# How long a consume() may wait for a first record: the stream's added latency at most.
CONSUME_WAIT = 0.05
RETRY_SECONDS = 3.0
CACHE_SECONDS = 60.0
CACHE_MAX = 200_000
_QUEUE_KBYTES = 8 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


class Registry:
    """device id → (controller MAC, device name), datapoint id → key; refreshed each minute
    (a device moved or registered shows up then)."""

    def __init__(self, db: PostgresStore) -> None:
        self.db = db
        self.devices: dict[int, tuple[str | None, str | None]] = {}
        self.datapoints: dict[int, str | None] = {}
        self.since = time.monotonic()

    async def fill(self, batches: Sequence[ProcessedBatch]) -> None:
        if time.monotonic() - self.since > CACHE_SECONDS or len(self.devices) > CACHE_MAX:
            self.devices, self.datapoints, self.since = {}, {}, time.monotonic()
        devices = {r.device_id for b in batches for r in b.readings}
        devices |= {e.device_id for b in batches for e in b.events}
        datapoints = {r.datapoint_id for b in batches for r in b.readings}
        devices -= self.devices.keys()
        datapoints -= self.datapoints.keys()
        if not devices and not datapoints:
            return
        try:
            await self._query(list(devices), list(datapoints))
        except Exception as exc:  # the registry away: items go out without MAC, to "all"
            log.warning("stream: registry lookup failed", extra={"error": type(exc).__name__})

    async def _query(self, devices: list[int], datapoints: list[int]) -> None:
        async with self.db.connection() as conn:
            if devices:
                cur = await conn.execute(
                    """SELECT DISTINCT ON (device_id) device_id, controller_mac, device_name
                       FROM registry.device_locations WHERE device_id = ANY(%s)""",
                    (devices,),
                )
                found = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
                for d in devices:
                    self.devices[d] = found.get(d, (None, None))
            if datapoints:
                cur = await conn.execute(
                    "SELECT id, key FROM registry.datapoints WHERE id = ANY(%s)", (datapoints,)
                )
                keys = dict(await cur.fetchall())
                for p in datapoints:
                    self.datapoints[p] = keys.get(p)

    def items(self, batch: ProcessedBatch) -> list[Item]:
        """The batch as stream items: readings, then events (connectivity typed as such)."""
        out: list[Item] = []
        unknown: tuple[str | None, str | None] = (None, None)
        for r in batch.readings:
            mac, name = self.devices.get(r.device_id, unknown)
            data: dict[str, Any] = {
                "mac": mac,
                "device_id": r.device_id,
                "device": name,
                "datapoint_id": r.datapoint_id,
                "datapoint": self.datapoints.get(r.datapoint_id),
                "timestamp": iso(r.timestamp_us),
                # NaN and infinities are not JSON a browser parses: null
                "value": r.value if math.isfinite(r.value) else None,
            }
            out.append((mac, frame("reading", data)))
        for e in batch.events:
            mac, name = self.devices.get(e.device_id, unknown)
            data = {
                "mac": mac,
                "device_id": e.device_id,
                "device": name,
                "kind": e.kind,
                "timestamp": iso(e.timestamp_us),
                "data": e.data,
            }
            kind = "connectivity" if e.kind == "connectivity" else "event"
            out.append((mac, frame(kind, data)))
        return out


class ProcessedFeed:
    """The thread that reads the processed topic for the hub: `start()`/`stop()` are the app's
    lifespan; `ready` is set once every partition is assigned (tests wait on it)."""

    def __init__(self, settings: KafkaSettings, hub: Hub, db: PostgresStore) -> None:
        self.topic = settings.kafka_processed_topic
        self.hub = hub
        self.metrics: ApiMetrics = hub.metrics
        self.registry = Registry(db)
        config = client_config(settings)
        self.auth: AuthFailureLog = config["error_cb"]
        self.config: dict[str, Any] = {
            **config,
            "error_cb": self._on_error,
            "group.id": GROUP,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest",
            "queued.max.messages.kbytes": _QUEUE_KBYTES,
            "fetch.wait.max.ms": 50,
        }
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_error(self, error: KafkaError) -> None:
        if error.code() != KafkaError.GROUP_AUTHORIZATION_FAILED:  # the group is never joined
            self.auth(error)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stream-feed", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
            self._thread = None

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            consumer = Consumer(self.config)
            try:
                if self._assign(consumer):
                    self.ready.set()
                    self._pump(consumer)
            except KafkaException as exc:
                log.warning(
                    "stream: Kafka did not answer; retrying",
                    extra={"topic": self.topic, "error": str(exc.args[0] if exc.args else exc)},
                )
            finally:
                self.ready.clear()
                consumer.close()
            self._stop.wait(RETRY_SECONDS)

    def _assign(self, consumer: Consumer) -> bool:
        metadata = consumer.list_topics(self.topic, timeout=5)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            log.warning("stream: the processed topic is missing; retrying",
                        extra={"topic": self.topic})  # fmt: skip
            return False
        consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in topic.partitions])
        # Resolve the end now, not at the first fetch: what is produced from here on is seen.
        for p in topic.partitions:
            consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5)
        consumer.consume(1, timeout=0)  # starts the fetchers at the resolved end
        return True

    def _pump(self, consumer: Consumer) -> None:
        while not self._stop.is_set():
            batches: list[ProcessedBatch] = []
            for message in consumer.consume(CONSUME_BATCH, timeout=CONSUME_WAIT):
                if message.error() is not None or self.hub.idle:
                    continue  # transport errors: librdkafka reconnects by itself
                try:
                    batches.append(decode_processed_batch(message.value() or b""))
                except FramingError:
                    self.metrics.stream_skipped.inc()
            if batches:
                self._hand_off(batches)

    def _hand_off(self, batches: list[ProcessedBatch]) -> None:
        """Deliver on the event loop and wait for it: one hand-off in flight at most."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._deliver(batches), self._loop)
        while not self._stop.is_set():
            try:
                future.result(timeout=0.5)
                return
            except TimeoutError:
                continue
            except Exception:
                log.exception("stream: a hand-off failed")
                return
        future.cancel()

    async def _deliver(self, batches: list[ProcessedBatch]) -> None:
        await self.registry.fill(batches)
        items: list[Item] = []
        for batch in batches:
            try:
                items += self.registry.items(batch)
            except (TypeError, ValueError, OverflowError):  # a row of the wrong types
                self.metrics.stream_skipped.inc()
        self.hub.deliver(items)
