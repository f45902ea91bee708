"""What the tests of the processor's Faust consumer thread share: a fresh topic on the test
broker, records produced in known batches, and the thread of an app made in the running loop."""

from __future__ import annotations

import uuid
from typing import Any, cast

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from f2pipe_processor.faust_adapter import ShortFetchConsumerThread, create_app
from f2pipe_processor.settings import Settings


def new_topic(bootstrap: str, prefix: str, partitions: int) -> str:
    """A topic of its own (a random suffix), created on the broker."""
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions)]).values():
        future.result(30)
    return topic


def produce_batches(bootstrap: str, topic: str, batches: dict[int, list[int]]) -> None:
    """Per partition, batches of the given record counts, each flushed as one batch."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    for partition, sizes in batches.items():
        for size in sizes:
            for i in range(size):
                producer.produce(topic, b"v%d" % i, key=b"k%d" % i, partition=partition)
            assert producer.flush(15) == 0


def consumer_thread(partitions: int) -> ShortFetchConsumerThread:
    """The consumer thread of an app on KAFKA_BOOTSTRAP_SERVERS. Call it inside the running
    loop: Faust takes that loop then; a loop of its own would be left unclosed."""
    app = create_app(Settings.load(), partitions=partitions)
    thread = cast(Any, app.consumer)._thread
    assert isinstance(thread, ShortFetchConsumerThread)
    return thread
