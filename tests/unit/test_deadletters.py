from __future__ import annotations

from f2pipe_shared.deadletters import DeadLetter, Reason, Stage


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
