"""confluent-kafka configuration and topic set-up shared by the bridge, processor and sink."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from f2pipe_shared.settings import KafkaSettings

log = logging.getLogger(__name__)


# Errors about the record itself (its size, its format): sending it again cannot succeed.
_RECORD_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
    }
)


def record_refused(err: KafkaError | None) -> bool:
    """True when Kafka refuses the record itself, so a retry would fail the same way."""
    return err is not None and err.code() in _RECORD_ERRORS


def kafka_error(exc: KafkaException) -> KafkaError | None:
    """The KafkaError a KafkaException carries, if any."""
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


def producer_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer: acks=all, retries without duplicates or reordering."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 5,
        "batch.num.messages": 10_000,
    }
    config.update(overrides)
    return config


def consumer_config(settings: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Manual commits only: a stage commits after its output is safe."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": settings.kafka_max_poll_interval_ms,
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        # librdkafka's default (3 s) lets a short session time out between heartbeats;
        # a third of the session is the usual ratio.
        "heartbeat.interval.ms": min(3000, settings.kafka_session_timeout_ms // 3),
        # Tansu makes a consumer with a full local queue wait 1 s between fetches; 10 ms is
        # about 4x faster there and harmless on Apache Kafka (docs/architecture.md).
        "fetch.queue.backoff.ms": 10,
    }
    config.update(overrides)
    return config


def pipeline_topics(settings: KafkaSettings) -> dict[str, int]:
    """Every topic of the pipeline with its partition count."""
    return {
        settings.kafka_raw_topic: settings.kafka_raw_partitions,
        settings.kafka_processed_topic: settings.kafka_processed_partitions,
        settings.kafka_deadletter_topic: settings.kafka_processed_partitions,
    }


def ensure_topics(
    settings: KafkaSettings, topics: Mapping[str, int], timeout: float = 30.0
) -> list[str]:
    """Create the missing topics; return the names created now. Existing ones are kept."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            name, num_partitions=partitions, replication_factor=settings.kafka_replication_factor
        )
        for name, partitions in topics.items()
        if name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
            log.info("created topic", extra={"topic": name, "partitions": topics[name]})
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a racing replica
                raise
    return created
