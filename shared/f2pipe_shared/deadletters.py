"""Dead-letter records (`iot-dead-letter`): the original bytes plus why a stage gave up.

The record's value is the original payload, unchanged, so an operator can replay it; the
stage, reason and context travel in headers, readable with any Kafka tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

HEADER_PREFIX = "dlq."


class Stage(StrEnum):
    bridge = "bridge"
    processor = "processor"
    sink = "sink"


class Reason(StrEnum):
    bad_topic = "bad_topic"
    oversize = "oversize"
    bad_batch = "bad_batch"
    invalid_json = "invalid_json"
    schema_violation = "schema_violation"
    unknown_mac = "unknown_mac"
    unmapped_connector = "unmapped_connector"
    unmapped_position = "unmapped_position"
    bad_hex = "bad_hex"
    short_frame = "short_frame"
    crc_mismatch = "crc_mismatch"
    bad_frame = "bad_frame"
    timestamp_implausible = "timestamp_implausible"
    invalid_record = "invalid_record"
    constraint_violation = "constraint_violation"


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    stage: Stage
    reason: Reason
    detail: str = Field(max_length=2000)
    original: bytes
    mqtt_topic: str | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    failed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def key(self) -> bytes | None:
        """Keyed by MQTT topic so one device's dead letters stay in order."""
        return self.mqtt_topic.encode() if self.mqtt_topic else None

    def headers(self) -> list[tuple[str, bytes]]:
        fields = self.model_dump(exclude={"original"}, exclude_none=True, mode="json")
        return [(HEADER_PREFIX + name, str(value).encode()) for name, value in fields.items()]

    @classmethod
    def from_kafka(
        cls, value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None
    ) -> DeadLetter:
        fields: dict[str, object] = {
            name.removeprefix(HEADER_PREFIX): (raw or b"").decode()
            for name, raw in headers or []
            if name.startswith(HEADER_PREFIX)
        }
        return cls.model_validate({**fields, "original": value or b""})
