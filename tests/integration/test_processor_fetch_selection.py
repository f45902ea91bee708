"""The partitions a worker's fetch drains: only those Faust has active, none when none is.

Faust hands aiokafka's ``Fetcher.fetched_records`` its live set of active partitions, and
aiokafka reads an empty set as "every partition". The set empties while a fetch waits when
a restarted worker seeks its stream partitions (every one paused for the seek): a fetch that
landed then was drained, aiokafka's position moved past it, and Faust dropped it as paused.
Those records were never processed: the kill -9 test of the whole pipeline lost thousands of
readings in 3 runs of 4 (the "holes" the processor's /healthz reported after a restart).
``ShortFetchConsumerThread._fetch_records`` drains through ``LiveSelection``. Here against
the real broker, with the consumer in the same state: records buffered for a partition Faust
has paused, the active set emptied while the fetch waits, then something else arrives.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka  # type: ignore[import-untyped]
import pytest
from faust.types import TP

from tests.integration.faustkit import consumer_thread, new_topic, produce_batches

pytestmark = pytest.mark.integration


async def buffered(consumer: Any, tp: Any, deadline_s: float = 15) -> None:
    """Until the fetcher holds records of ``tp`` not yet handed out (as after a seek)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while tp not in consumer._fetcher._records:
        assert loop.time() < end, "the fetcher never fetched the records"
        await asyncio.sleep(0.05)


async def drain_while_the_selection_empties(bootstrap: str, topic: str) -> dict[str, Any]:
    thread = consumer_thread(partitions=2)
    paused_tp, other_tp = aiokafka.TopicPartition(topic, 0), aiokafka.TopicPartition(topic, 1)
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        consumer.assign([paused_tp, other_tp])
        await consumer.seek_to_beginning(paused_tp, other_tp)
        await buffered(consumer, paused_tp)
        # Faust's active set holds only the other partition; the fetch waits for it.
        active: set[TP] = {TP(topic, 1)}
        fetch = asyncio.ensure_future(thread._fetch_records(consumer, active, timeout=3.0))
        await asyncio.sleep(0.3)
        active.clear()  # perform_seek pauses every stream partition
        # A fetch lands meanwhile: one record for the other partition.
        await asyncio.to_thread(produce_batches, bootstrap, topic, {1: [1]})
        while_empty = await fetch
        position_after = await consumer.position(paused_tp)
        # Once Faust resumes the partition, its records are drained, from where they were.
        resumed = await thread._fetch_records(consumer, {TP(topic, 0)}, timeout=3.0)
    finally:
        await consumer.stop()
    return {"while_empty": while_empty, "position": position_after, "resumed": resumed}


def test_an_emptied_selection_drains_nothing_and_the_records_wait_for_their_resume(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = new_topic(kafka_bootstrap, "fetch", partitions=2)
    produce_batches(kafka_bootstrap, topic, {0: [5]})
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)

    got = asyncio.run(drain_while_the_selection_empties(kafka_bootstrap, topic))

    drained = {
        tp.partition: [r.offset for r in records] for tp, records in got["while_empty"].items()
    }
    assert drained == {}, "records drained for partitions Faust had paused"
    assert got["position"] == 0, "the paused partition's position moved past unread records"
    resumed = {tp.partition: [r.offset for r in records] for tp, records in got["resumed"].items()}
    assert resumed == {0: [0, 1, 2, 3, 4]}
