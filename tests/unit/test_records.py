from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from f2pipe_shared.records import (
    Event,
    FramingError,
    ProcessedBatch,
    RawMessage,
    Reading,
    decode_processed_batch,
    decode_raw_batch,
    encode_processed_batch,
    encode_raw_batch,
)

raw_messages = st.lists(
    st.builds(
        RawMessage,
        st.text(min_size=1, max_size=80),
        st.binary(max_size=300),
        st.integers(min_value=0, max_value=2**62),
    ),
    max_size=50,
)


@given(raw_messages)
def test_raw_batch_round_trips(messages: list[RawMessage]) -> None:
    assert decode_raw_batch(encode_raw_batch(messages)) == messages


def test_raw_payload_bytes_are_kept_unchanged() -> None:
    payload = b'{"timestamp": "2026-11-24 10:00:00.000001", "data": "01 03"}\x00\xff'
    [message] = decode_raw_batch(encode_raw_batch([RawMessage("t", payload, 1)]))
    assert message.payload == payload
    assert isinstance(message, RawMessage)


readings = st.builds(
    Reading,
    st.integers(min_value=0, max_value=2**62),
    st.integers(min_value=1, max_value=2**62),
    st.integers(min_value=1, max_value=2**31 - 1),
    st.floats(allow_nan=False),
)
events = st.builds(
    Event,
    st.integers(min_value=0, max_value=2**62),
    st.integers(min_value=1, max_value=2**62),
    st.sampled_from(["door-sensor-1", "reader-1", "motion-sensor-2"]),
    st.dictionaries(st.text(max_size=10), st.one_of(st.booleans(), st.text(max_size=20))),
)


@given(st.integers(0, 1000), st.integers(0, 2**40), st.lists(readings), st.lists(events))
def test_processed_batch_round_trips(
    partition: int, offset: int, rs: list[Reading], es: list[Event]
) -> None:
    batch = ProcessedBatch(partition, offset, rs, es)
    assert decode_processed_batch(encode_processed_batch(batch)) == batch


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\xc1", "not a msgpack batch"),
        (msgpack.packb({"a": 1}), "2-element array"),
        (msgpack.packb([99, []]), "unknown batch format version 99"),
        (msgpack.packb([1, [["t", b"p"]]]), r"not \[topic, payload, received_at_us\]"),
        (msgpack.packb([1, [["t", "text not bytes", 5]]], use_bin_type=True), "wrong types"),
    ],
)
def test_bad_raw_batches_are_framing_errors(data: bytes, fragment: str) -> None:
    with pytest.raises(FramingError, match=fragment) as info:
        decode_raw_batch(data)
    assert info.value.reason == "bad_batch"


def test_bad_processed_batch_is_a_framing_error() -> None:
    with pytest.raises(FramingError, match="wrong shape"):
        decode_processed_batch(msgpack.packb([1, 0, 0, [[1, 2]], []]))


def test_partition_for_device_is_stable_and_spreads() -> None:
    from f2pipe_shared.records import partition_for_device

    # Fixed values: the mapping must never change between releases, or per-device order
    # breaks for messages in flight during an upgrade.
    assert partition_for_device("f2-aabbccddee01", 6) == 0
    assert partition_for_device("f2-e4fd45f654be", 12) == 7
    spread = {partition_for_device(f"f2-aabbccdd{i:04x}", 6) for i in range(100)}
    assert spread == set(range(6))
