from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from f2pipe_shared.kafka import consumer_config, ensure_topics, pipeline_topics, producer_config
from f2pipe_shared.settings import KafkaSettings
from tests.integration.bridgekit import Topics

pytestmark = pytest.mark.integration


def test_ensure_topics_creates_missing_topics_once(kafka_bootstrap: str) -> None:
    names = Topics.unique()
    settings = names.kafka_settings(
        kafka_bootstrap, kafka_raw_partitions=3, kafka_processed_partitions=2
    )
    topics = pipeline_topics(settings)
    assert sorted(ensure_topics(settings, topics)) == sorted(topics)
    assert ensure_topics(settings, topics) == []
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    assert len(metadata.topics[names.raw].partitions) == 3
    assert len(metadata.topics[names.processed].partitions) == 2


def test_configs_keep_delivery_guarantees() -> None:
    settings = KafkaSettings(kafka_bootstrap_servers="k:9092")
    producer = producer_config(settings, **{"linger.ms": 50})
    assert producer["enable.idempotence"] is True
    assert producer["acks"] == "all"
    assert producer["linger.ms"] == 50
    consumer = consumer_config(settings, "sink")
    assert consumer["enable.auto.commit"] is False
    assert consumer["group.id"] == "sink"
