"""Where the processor's table recovery reads a changelog up to: the end a fetch reports.

Tansu (the development broker) answers ListOffsets with the base offset of the last batch
produced + 1; a fetch reports the true end. ``ShortFetchConsumerThread._true_ends`` checks
each end with a fetch of the last batch (the worker-level test of what it prevents is in
test_processor_latest_workers.py). Here it runs against the real broker, and against none.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping

import aiokafka  # type: ignore[import-untyped]
import pytest
from faust.types import TP

from f2pipe_devtools.servers import free_port
from f2pipe_processor import faust_adapter
from tests.integration.faustkit import consumer_thread, new_topic, produce_batches

pytestmark = pytest.mark.integration


async def true_ends(reported: dict[TP, int]) -> Mapping[TP, int]:
    return await consumer_thread(partitions=3)._true_ends(reported)


async def reported_ends(bootstrap: str, topic: str, partitions: int) -> dict[TP, int]:
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(
            [aiokafka.TopicPartition(topic, p) for p in range(partitions)]
        )
    finally:
        await consumer.stop()
    return {TP(tp.topic, tp.partition): end for tp, end in ends.items()}


def test_each_end_is_the_one_a_fetch_of_the_last_batch_reports(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = new_topic(kafka_bootstrap, "changelog", partitions=3)
    # Partition 0: a single record, then a batch of 5; partition 1: one batch of 3; 2: empty.
    produce_batches(kafka_bootstrap, topic, {0: [1, 5], 1: [3]})
    reported = asyncio.run(reported_ends(kafka_bootstrap, topic, 3))
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):  # Tansu, not a Kafka given to the tests
        assert reported == {TP(topic, 0): 2, TP(topic, 1): 1, TP(topic, 2): 0}

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    ends = asyncio.run(true_ends(reported))
    assert ends == {TP(topic, 0): 6, TP(topic, 1): 3, TP(topic, 2): 0}


def test_without_a_broker_to_ask_the_reported_ends_stand(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(faust_adapter, "TRUE_END_TIMEOUT_S", 2.0)
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", nowhere)
    reported = {TP("changelog", 0): 4, TP("changelog", 1): 0}
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=faust_adapter.log.name):
        ends = asyncio.run(true_ends(reported))
    assert ends == reported
    assert time.monotonic() - started < 30  # aiokafka's bootstrap gives up; recovery goes on
    assert "could not check the changelogs' ends" in caplog.text
