"""The Faust app: the whole flow of the processor, readable in one place.

    raw-iot-data record (one batch of MQTT messages)
      -> BatchProcessor.process: parse -> batched lookup (memory, Redis, PostgreSQL) -> decode
      -> latest-value table (one update per device touched; changelog every few seconds)
      -> processed-iot-data record + dead letters, produced by librdkafka
      -> ack the raw record once Kafka acknowledged its output (and every earlier record's
         of its partition); Faust commits acked offsets

Acks are manual (``stream.noack()``): Faust acks an event when the loop moves on, even
when the body raised or was cancelled, which would commit a record whose output never
left. Here a record is acked only once its output is delivered (acks.py), so a crash, kill
or PostgreSQL outage leaves its offset uncommitted and the record is processed again.
Up to PROCESSOR_MAX_INFLIGHT records may await that acknowledgement at once, so a Kafka
round trip does not stall decoding. faust_consumer.py closes a Faust bug that skipped
records on restart.
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View

from f2pipe_processor import latest, metrics
from f2pipe_processor.acks import Ack, InFlight
from f2pipe_processor.batch import BatchProcessor
from f2pipe_processor.faust_consumer import SafeSeekConsumer, transport_for
from f2pipe_processor.invalidation import RegistryListener
from f2pipe_processor.output import KafkaOutput, output_records
from f2pipe_processor.registry import Registry
from f2pipe_processor.resolver import RedisCache, Resolver
from f2pipe_processor.settings import Settings


class Runtime:
    """Everything the agent uses besides Faust, built once per worker."""

    def __init__(self, config: Settings) -> None:
        settings = config.processor
        self.config = config
        retry_max = settings.processor_postgres_retry_max_seconds
        self.registry = Registry(config.postgres.conninfo, retry_max_seconds=retry_max)
        self.redis = RedisCache(
            config.redis.url,
            prefix=settings.processor_redis_prefix,
            ttl_seconds=settings.processor_cache_ttl_seconds,
            retry_seconds=settings.processor_redis_retry_seconds,
        )
        self.resolver = Resolver(self.registry, self.redis, settings.processor_local_cache_size)
        self.processor = BatchProcessor(
            self.resolver,
            source_topic=config.kafka.kafka_raw_topic,
            max_future_seconds=settings.processor_max_future_seconds,
            max_age_seconds=settings.max_age(config.telemetry.telemetry_retention).total_seconds(),
        )
        self.output = KafkaOutput(config.kafka)
        self.listener = RegistryListener(
            config.postgres.conninfo,
            self.resolver,
            retry_max_seconds=retry_max,
        )
        self.inflight = InFlight(settings.processor_max_inflight)
        self.consumer: SafeSeekConsumer | None = None  # set when Faust creates it
        self.started_at = time.time()

    def health(self) -> tuple[bool, dict[str, Any]]:
        registry_ok = self.registry.down_since is None
        holes = self.consumer.holes_seen if self.consumer is not None else 0
        redis = "up" if self.redis.up else f"down (PostgreSQL answers): {self.redis.last_error}"
        details: dict[str, Any] = {
            "registry": "up" if registry_ok else f"down: {self.registry.last_error}",
            "listener": "listening" if self.listener.connected else "disconnected",
            "redis": redis,
            "output_failures": self.output.failures,
            "inflight_records": len(self.inflight),
            "cached_entries": self.resolver.cached,
            "uptime_s": round(time.time() - self.started_at),
        }
        if holes:
            # Records Faust skipped wait uncommitted: a restart processes them.
            details["skipped_by_faust"] = f"{holes} hole(s): restart this worker"
        # Redis down degrades, it does not stop processing: still healthy.
        healthy = registry_ok and self.listener.connected and not holes
        return healthy and self.output.failures == 0, details


class ProcessorApp(faust.App):
    """Faust's app with a bounded wait for in-flight records on shutdown and rebalance.

    Faust waits there until every event an agent took is acked ("wait_empty"): for ever
    when a record waits for PostgreSQL, because such a record is rightly never acked. We
    wait for the outputs already in flight instead (a few ms normally), then commit what is
    acked; the rest is processed again by whoever owns the partition next.
    """

    runtime: Runtime | None = None

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        if self.runtime is not None:
            await self.runtime.inflight.drain(DRAIN_SECONDS)
        await consumer.commit()

    def _new_transport(self) -> Any:
        # Faust's own transport, with the consumer of faust_consumer.py.
        assert self.runtime is not None
        raw_topic = self.runtime.config.kafka.kafka_raw_topic
        return transport_for(frozenset({raw_topic}))(self.conf.broker_consumer, self)

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        if self.runtime is not None and isinstance(consumer, SafeSeekConsumer):
            self.runtime.consumer = consumer
        return consumer


DRAIN_SECONDS = 10.0


def create_app(config: Settings, partitions: int) -> tuple[faust.App, Runtime]:
    """The Faust app for ``partitions`` raw partitions (the latest table gets as many)."""
    runtime = Runtime(config)
    kafka = config.kafka
    app = ProcessorApp(
        config.processor.processor_app_id,
        broker=[f"kafka://{hp.strip()}" for hp in kafka.kafka_bootstrap_servers.split(",")],
        store="memory://",
        datadir=config.processor.processor_data_dir
        or str(Path(tempfile.gettempdir()) / f"{config.processor.processor_app_id}-data"),
        web_enabled=True,
        web_bind=config.observability.metrics_host,
        web_port=config.port,
        canonical_url=f"http://{socket.gethostname()}:{config.port}",
        # Some brokers hold a group join for the whole rebalance timeout (Tansu:
        # docs/architecture.md).
        broker_rebalance_timeout=kafka.kafka_max_poll_interval_ms / 1000,
        broker_session_timeout=kafka.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, kafka.kafka_session_timeout_ms / 3000),
        broker_commit_interval=config.processor.processor_commit_interval_seconds,
        consumer_auto_offset_reset="earliest",
        topic_partitions=partitions,
        topic_replication_factor=kafka.kafka_replication_factor,
        topic_disable_leader=True,
        # A raw record holds up to ~500 messages (~70 kB): Faust's default buffer of 4096
        # events per stream would hold hundreds of MB.
        stream_buffer_maxsize=64,
        producer_acks=-1,
    )
    app.runtime = runtime
    raw_topic = app.topic(kafka.kafka_raw_topic, key_serializer="raw", value_serializer="raw")
    latest_values = latest.LatestTable(app, partitions)
    processed_topic, dlq_topic = kafka.kafka_processed_topic, kafka.kafka_deadletter_topic

    @app.agent(raw_topic, name="process")
    async def process(stream: Any) -> None:
        async for event in stream.noack().events():
            message = event.message
            result = await runtime.processor.process(message.partition, message.offset, event.value)
            started = time.perf_counter()
            records = output_records(result, processed_topic, dlq_topic, kafka.kafka_raw_topic)
            latest_values.write(result.latest)
            runtime.inflight.add(
                message.partition, runtime.output.deliver(records), ack=_acker(stream, event)
            )
            metrics.STAGE_SECONDS.labels("produce").inc(time.perf_counter() - started)
            await runtime.inflight.wait_below_limit()

    app.task(runtime.listener.run)

    # Faust's timer decorator is untyped; the function keeps its signature.
    @app.timer(config.processor.processor_latest_flush_seconds)  # type: ignore[untyped-decorator]
    async def flush_latest() -> None:
        records = latest_values.flush()
        if records:
            await runtime.output.deliver(records)

    @app.page("/healthz")
    async def healthz(self: View, request: Request) -> Response:
        ok, details = runtime.health()
        body = {"status": "ok" if ok else "unhealthy", **details}
        return self.json(body, status=200 if ok else 503)

    latest.register_views(app, latest_values)
    _prometheus(app)
    return app, runtime


def _acker(stream: Any, event: Any) -> Ack:
    async def ack() -> object:
        return await stream.ack(event)

    return ack


_prometheus_done = False


def _prometheus(app: faust.App) -> None:
    """Faust's sensor and GET /metrics (our metrics share the default registry)."""
    global _prometheus_done  # noqa: PLW0603 - the registry is process-wide, so is the guard
    from faust.sensors.prometheus import setup_prometheus_sensors

    if not _prometheus_done:
        setup_prometheus_sensors(app, name_prefix="f2pipe_processor_faust")
        _prometheus_done = True
