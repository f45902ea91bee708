"""The sink's dead letters, delivered before the offsets of their records are committed.

`DeadLetterSender` holds the logic over any `ports.RecordProducer`; `DeadLetterProducer` is
the same over a real confluent-kafka Producer configured from the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from f2pipe_shared.deadletters import DeadLetter
from f2pipe_shared.kafka import kafka_error, producer_config, record_refused
from f2pipe_shared.settings import KafkaSettings
from f2pipe_sink.ports import DeliveryCallback, RecordProducer

log = logging.getLogger(__name__)


class DeadLetterError(Exception):
    """Kafka did not confirm a dead letter: the batch must not be committed yet."""


class DeadLetterSender:
    """Dead letters produced to `topic` and confirmed, each send waiting up to `timeout`."""

    def __init__(self, producer: RecordProducer, topic: str, timeout: float = 15.0) -> None:
        self.topic = topic
        self._timeout = timeout
        self._producer = producer

    def send(self, letters: Sequence[DeadLetter]) -> None:
        """Produce and wait for every acknowledgement; DeadLetterError if any failed.

        A letter Kafka refuses for what it is (its size) goes again without the original's
        bytes (its size and sha256 stay in the headers): a retry could never succeed.
        """
        if not letters:
            return
        refused = self._deliver(letters)
        if refused:
            log.error("Kafka refused dead letters; sending them without the original bytes",
                      extra={"letters": len(refused)})  # fmt: skip
            refused = self._deliver([letter.stripped() for letter in refused])
        if refused:
            raise DeadLetterError(f"Kafka refused {len(refused)} dead letters without bytes")
        for letter in letters:
            log.warning(
                "dead-lettered",
                extra={
                    "reason": str(letter.reason),
                    "source_topic": letter.source_topic,
                    "source_partition": letter.source_partition,
                    "source_offset": letter.source_offset,
                    "detail": letter.detail[:300],
                },
            )

    def _deliver(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Send and wait: the letters Kafka refused as records; DeadLetterError for the rest."""
        refused: list[DeadLetter] = []
        failures: list[str] = []

        def delivered(letter: DeadLetter, err: KafkaError | None, _msg: object) -> None:
            if record_refused(err) and letter.original:
                refused.append(letter)
            elif err is not None:
                failures.append(str(err))

        for letter in letters:
            try:
                self._produce(letter, partial(delivered, letter))
            except KafkaException as exc:
                delivered(letter, kafka_error(exc), None)
        remaining = self._producer.flush(self._timeout)
        if remaining or failures:
            raise DeadLetterError(
                f"{remaining} dead letters unconfirmed after {self._timeout}s, "
                f"{len(failures)} failed: {'; '.join(failures[:3])}"
            )
        return refused

    def _produce(self, letter: DeadLetter, delivered: DeliveryCallback) -> None:
        headers: list[tuple[str, str | bytes | None]] = list(letter.headers())
        while True:
            try:
                self._producer.produce(
                    self.topic,
                    value=letter.original,
                    key=letter.key(),
                    headers=headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:  # local queue full: let deliveries drain, then try again
                self._producer.poll(0.5)

    def close(self) -> None:
        self._producer.flush(self._timeout)


class DeadLetterProducer(DeadLetterSender):
    """Over a confluent-kafka Producer; `overrides` are librdkafka settings (tests)."""

    def __init__(self, settings: KafkaSettings, timeout: float = 15.0, **overrides: Any) -> None:
        self._config = producer_config(settings, **{"client.id": "f2pipe-sink-dlq", **overrides})
        self._current = Producer(self._config)
        super().__init__(self._current, settings.kafka_deadletter_topic, timeout)

    def renew(self) -> None:
        """Go on with a new producer: the broker lost this one's producer id (it restarted
        empty), so it would retry what it holds for ever. Nothing it holds was confirmed, so
        no offset was committed past it: the batch's next attempt sends it again."""
        old = self._current
        self._current = self._producer = Producer(self._config)
        old.purge(in_queue=True, in_flight=True, blocking=False)
        old.flush(0)
