from __future__ import annotations

import hashlib

import pytest

from f2pipe_shared.deadletters import (
    DETAIL_MAX,
    MAX_ORIGINAL_BYTES,
    PREVIEW_BYTES,
    TOPIC_MAX,
    DeadLetter,
    Reason,
    Stage,
)


def test_dead_letter_survives_kafka_headers() -> None:
    letter = DeadLetter(
        stage=Stage.processor,
        reason=Reason.crc_mismatch,
        detail="CRC 0x1234 expected 0xabcd (device f2-aabbccddee01)",
        original=b'{"data": "01 03 02 00 01 00 00"}',
        mqtt_topic="tele/f2-aabbccddee01/sensor-mode/J3/sensor-1",
        source_topic="raw-iot-data",
        source_partition=2,
        source_offset=99,
    )
    headers = letter.headers()
    assert ("dlq.reason", b"crc_mismatch") in headers
    assert ("dlq.stage", b"processor") in headers
    assert letter.key() == b"tele/f2-aabbccddee01/sensor-mode/J3/sensor-1"
    assert DeadLetter.from_kafka(letter.original, [*headers, ("other", b"x")]) == letter


def test_dead_letter_without_context_has_no_key_or_empty_headers() -> None:
    letter = DeadLetter(stage=Stage.bridge, reason=Reason.oversize, detail="too big", original=b"")
    assert letter.key() is None
    names = [name for name, _ in letter.headers()]
    assert "dlq.mqtt_topic" not in names
    assert DeadLetter.from_kafka(None, letter.headers()).original == b""


def test_every_input_error_has_a_dead_letter_reason() -> None:
    from f2pipe_shared import decoding, payloads, records, topics

    reasons = [
        topics.TopicError.reason,
        payloads.InvalidJson.reason,
        payloads.SchemaViolation.reason,
        decoding.BadHexError.reason,
        decoding.ShortFrameError.reason,
        decoding.CrcMismatchError.reason,
        decoding.FrameFormatError.reason,
        records.FramingError.reason,
    ]
    assert {Reason(r) for r in reasons} == {
        Reason.bad_topic,
        Reason.invalid_json,
        Reason.schema_violation,
        Reason.bad_hex,
        Reason.short_frame,
        Reason.crc_mismatch,
        Reason.bad_frame,
        Reason.bad_batch,
    }


def test_an_original_above_the_limit_travels_as_a_preview_with_size_and_sha256() -> None:
    original = bytes(range(256)) * 2048  # 512 KiB
    letter = DeadLetter(
        stage=Stage.sink, reason=Reason.bad_batch, detail="not a batch", original=original
    )
    assert letter.original == original[:PREVIEW_BYTES]
    assert letter.original_size == len(original)
    assert letter.original_sha256 == hashlib.sha256(original).hexdigest()
    headers = dict(letter.headers())
    assert headers["dlq.original_size"] == str(len(original)).encode()
    # Read back from Kafka, the preview keeps the size and digest of what arrived.
    again = DeadLetter.from_kafka(letter.original, letter.headers())
    assert again == letter


def test_an_original_up_to_the_limit_travels_whole() -> None:
    original = b"x" * MAX_ORIGINAL_BYTES
    letter = DeadLetter(stage=Stage.sink, reason=Reason.bad_batch, detail="d", original=original)
    assert letter.original == original
    assert letter.original_size is None
    assert "dlq.original_size" not in dict(letter.headers())


@pytest.mark.parametrize("reason", [Reason.oversize, Reason.unproducible])
def test_letters_about_size_carry_only_a_preview(reason: Reason) -> None:
    original = b"y" * (16 * 1024 + 1)
    letter = DeadLetter(stage=Stage.bridge, reason=reason, detail="big", original=original)
    assert len(letter.original) == PREVIEW_BYTES
    assert letter.original_size == len(original)


def test_stripped_letter_keeps_reason_size_and_digest_without_bytes() -> None:
    original = b'{"data": "01 03"}'
    letter = DeadLetter(stage=Stage.bridge, reason=Reason.bad_topic, detail="d", original=original)
    stripped = letter.stripped()
    assert stripped.original == b""
    assert stripped.reason is Reason.bad_topic
    assert stripped.original_size == len(original)
    assert stripped.original_sha256 == hashlib.sha256(original).hexdigest()
    previewed = DeadLetter(
        stage=Stage.bridge, reason=Reason.oversize, detail="d", original=b"z" * 5000
    ).stripped()
    assert previewed.original_size == 5000  # the size of what arrived, not of the preview


def test_overlong_detail_and_topic_are_cut_not_refused() -> None:
    letter = DeadLetter(
        stage=Stage.bridge,
        reason=Reason.bad_topic,
        detail="d" * 10_000,
        original=b"",
        mqtt_topic="t/" * 30_000,
    )
    assert len(letter.detail) == DETAIL_MAX
    assert letter.mqtt_topic is not None
    assert len(letter.mqtt_topic) == TOPIC_MAX
