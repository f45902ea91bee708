"""`f2pipe sink`: every setting comes from the environment (docs/configuration.md).

`build()` is the one place that constructs the real adapters (confluent-kafka's Consumer,
the Writer, the DeadLetterProducer); `main()` runs what it built.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException

from f2pipe_shared.kafka import TopicWatch, consumer_config, verify_topics
from f2pipe_shared.lifecycle import serve
from f2pipe_shared.logs import configure_logging
from f2pipe_sink.dlq import DeadLetterProducer
from f2pipe_sink.metrics import SinkMetrics
from f2pipe_sink.ports import DeadLetters, RecordConsumer, RowWriter, TopicStatus
from f2pipe_sink.service import SinkService
from f2pipe_sink.settings import Settings
from f2pipe_sink.writer import Writer

log = logging.getLogger("f2pipe_sink")


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="f2pipe sink",
        description="processed-iot-data -> TimescaleDB, batched and idempotent",
    )


def build(
    settings: Settings,
    *,
    consumer: RecordConsumer | None = None,
    writer: RowWriter | None = None,
    dead_letters: DeadLetters | None = None,
    metrics: SinkMetrics | None = None,
    topics: TopicStatus | None = None,
) -> SinkService:
    """The sink with its own metrics; an adapter not passed in is the real one."""
    kafka, sink = settings.kafka, settings.sink
    if consumer is None:
        consumer = Consumer(
            consumer_config(kafka, sink.sink_group_id, **{"client.id": "f2pipe-sink"})
        )
    if writer is None:
        writer = Writer(settings.conninfo)
    if dead_letters is None:
        dead_letters = DeadLetterProducer(kafka)
    return SinkService(
        sink,
        kafka.kafka_processed_topic,
        consumer=consumer,
        writer=writer,
        dead_letters=dead_letters,
        metrics=metrics or SinkMetrics(),
        topics=topics,
        renew_producer=dead_letters.renew if isinstance(dead_letters, DeadLetterProducer) else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser().parse_args(argv)
    settings = Settings.load()
    kafka, sink = settings.kafka, settings.sink
    configure_logging("sink", settings.common.log_level, settings.common.log_format)

    topics = {kafka.kafka_processed_topic: kafka.kafka_processed_partitions}
    topics[kafka.kafka_deadletter_topic] = kafka.kafka_processed_partitions
    try:
        # The sink reads whatever partitions the topic has: another count is reported, not
        # refused (the bridge and processor refuse a raw topic's).
        verify_topics(kafka, topics)
    except KafkaException as exc:
        log.error("kafka unreachable", extra={"error": str(exc)})
        return 1

    metrics = SinkMetrics()
    watch = TopicWatch(kafka, topics, metrics).start()
    service = build(settings, metrics=metrics, topics=watch)
    try:
        return serve(
            "sink", service, service.run,
            host=settings.observability.metrics_host, port=settings.metrics_port,
            registry=service.metrics.registry, topic=service.topic, group=sink.sink_group_id,
            batch_size=sink.batch_size, flush_interval=sink.flush_interval,
        )  # fmt: skip
    finally:
        watch.stop()
