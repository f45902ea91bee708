"""The sink's dead letters, delivered before the offsets of their records are committed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from f2pipe_shared.deadletters import DeadLetter
from f2pipe_shared.kafka import producer_config
from f2pipe_shared.settings import KafkaSettings

log = logging.getLogger(__name__)


class DeadLetterError(Exception):
    """Kafka did not confirm a dead letter: the batch must not be committed yet."""


class DeadLetterProducer:
    def __init__(self, settings: KafkaSettings, timeout: float = 15.0, **overrides: Any) -> None:
        self.topic = settings.kafka_deadletter_topic
        self._timeout = timeout
        self._producer = Producer(
            producer_config(settings, **{"client.id": "f2pipe-sink-dlq", **overrides})
        )

    def send(self, letters: Sequence[DeadLetter]) -> None:
        """Produce and wait for every acknowledgement; DeadLetterError if any failed."""
        if not letters:
            return
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(str(err))

        for letter in letters:
            self._produce(letter, delivered)
        remaining = self._producer.flush(self._timeout)
        if remaining or failures:
            raise DeadLetterError(
                f"{remaining} dead letters unconfirmed after {self._timeout}s, "
                f"{len(failures)} failed: {'; '.join(failures[:3])}"
            )
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

    def _produce(self, letter: DeadLetter, delivered: Any) -> None:
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
            except KafkaException as exc:  # e.g. larger than the topic accepts
                raise DeadLetterError(f"cannot produce a dead letter: {exc}") from exc

    def close(self) -> None:
        self._producer.flush(self._timeout)
