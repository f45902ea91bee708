"""Dead-letter records (`iot-dead-letter`): the original bytes plus why a stage gave up.

The record's value is the original payload, unchanged, so an operator can replay it; the
stage, reason and context travel in headers, readable with any Kafka tool.

A dead letter must always be producible, whatever it describes: an original larger than
MAX_ORIGINAL_BYTES, or one dead-lettered for its size (`oversize`, `unproducible`), travels as
its first PREVIEW_BYTES with its full size and sha256 in headers, and `stripped()` drops even
the preview when Kafka refuses the letter itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

HEADER_PREFIX = "dlq."
# Kafka's default record limit is 1 MB: a letter with a whole original up to this size and
# its headers stays well inside it.
MAX_ORIGINAL_BYTES = 256 * 1024
PREVIEW_BYTES = 1024
DETAIL_MAX = 2000
TOPIC_MAX = 1000


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
    unproducible = "unproducible"  # Kafka refuses the record itself (e.g. its size)


# Dead-lettered because of their size: replaying them is pointless, a preview tells enough.
_PREVIEW_ONLY = frozenset({Reason.oversize.value, Reason.unproducible.value})


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    stage: Stage
    reason: Reason
    detail: str = Field(max_length=DETAIL_MAX)
    original: bytes
    # Set when `original` holds only a preview (or nothing) of what arrived.
    original_size: int | None = None
    original_sha256: str | None = None
    mqtt_topic: str | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    failed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        """No input may make a dead letter unproducible or invalid: cut what is too long."""
        if not isinstance(data, dict):
            return data
        detail, topic = data.get("detail"), data.get("mqtt_topic")
        if isinstance(detail, str) and len(detail) > DETAIL_MAX:
            data = {**data, "detail": detail[: DETAIL_MAX - 1] + "…"}
        if isinstance(topic, str) and len(topic) > TOPIC_MAX:  # MQTT allows 65,535 bytes
            data = {**data, "mqtt_topic": topic[:TOPIC_MAX]}
        original = data.get("original")
        if data.get("original_size") is not None or not isinstance(original, bytes | bytearray):
            return data
        limit = PREVIEW_BYTES if str(data.get("reason")) in _PREVIEW_ONLY else MAX_ORIGINAL_BYTES
        if len(original) <= limit:
            return data
        return {**data, **_digest(bytes(original)), "original": bytes(original[:PREVIEW_BYTES])}

    def stripped(self) -> DeadLetter:
        """The same letter without the original's bytes, for when Kafka refuses it."""
        digest = {} if self.original_size is not None else _digest(self.original)
        return self.model_copy(update={**digest, "original": b""})

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


def _digest(original: bytes) -> dict[str, Any]:
    return {"original_size": len(original), "original_sha256": hashlib.sha256(original).hexdigest()}
