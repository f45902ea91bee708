"""Encoding and decoding the inter-service batches (500 messages, as the bridge sends them)."""

from __future__ import annotations

import json
import random

from f2pipe_devtools.bench.report import Measurement, Report, rate
from f2pipe_shared import records
from f2pipe_shared.records import Event, ProcessedBatch, RawMessage, Reading

BATCH = 500


def sample_raw_batch(n: int = BATCH, seed: int = 1) -> list[RawMessage]:
    rng = random.Random(seed)
    messages = []
    for i in range(n):
        mac = f"aabbccdd{i % 100:04x}"
        frame = " ".join(f"{rng.randrange(256):02X}" for _ in range(11))
        payload = json.dumps({"timestamp": "2026-11-24 10:00:00.123456", "data": frame}).encode()
        messages.append(
            RawMessage(
                f"tele/f2-{mac}/sensor-mode/J3/sensor-{i % 6 + 1}",
                payload,
                1_795_000_000_000_000 + i,
            )
        )
    return messages


def sample_processed_batch(messages: int = BATCH) -> ProcessedBatch:
    readings = [
        Reading(1_795_000_000_000_000 + i, 1000 + i // 3, 1 + i % 3, 20.0 + i / 100)
        for i in range(messages * 3)
    ]
    events = [Event(1_795_000_000_000_000, 7, "door-sensor-1", {"status": True})]
    return ProcessedBatch(3, 12345, readings, events)


def run(report: Report, repeats: int, min_seconds: float) -> None:
    raw = sample_raw_batch()
    raw_bytes = records.encode_raw_batch(raw)
    processed = sample_processed_batch()
    processed_bytes = records.encode_processed_batch(processed)
    n_read = len(processed.readings)
    cases = [
        ("raw batch encode", lambda: records.encode_raw_batch(raw), BATCH, "messages/s"),
        ("raw batch decode", lambda: records.decode_raw_batch(raw_bytes), BATCH, "messages/s"),
        ("processed batch encode", lambda: records.encode_processed_batch(processed), n_read,
         "readings/s"),
        ("processed batch decode", lambda: records.decode_processed_batch(processed_bytes),
         n_read, "readings/s"),
    ]  # fmt: skip
    sizes = {"raw": len(raw_bytes), "processed": len(processed_bytes)}
    for name, fn, items, unit in cases:
        kind = name.split()[0]
        note = f"{BATCH} messages, {sizes[kind]:,} bytes/batch"
        report.add(Measurement(name, unit, rate(fn, items, repeats, min_seconds), note))
