"""Reading a simulator ledger back: what the database must hold once the pipeline carried it.

The simulator writes the ledger (`f2pipe_simulator.ledger.Ledger`); tests and benchmarks use
this oracle to compare the database with it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from f2pipe_shared.timestamps import parse_device_timestamp, to_epoch_us


def iter_ledger(path: Path) -> Iterator[dict[str, Any]]:
    """The lines of a ledger, parsed one at a time (a benchmark's ledger is large)."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every line of a ledger, parsed (for tests and benchmarks)."""
    return list(iter_ledger(path))


Row = tuple[int, int, int, float]  # timestamp_us, device_id, datapoint_id, value


@dataclass
class Expected:
    """What the database must hold once the pipeline carried a ledger's messages."""

    readings: set[Row] = field(default_factory=set)
    events: Counter[tuple[int, int]] = field(default_factory=Counter)  # (timestamp_us, device)
    published: int = 0


def datapoint_ids(header: dict[str, Any]) -> dict[tuple[int, str], int]:
    """(template id, reading key) -> datapoint id, from a ledger's header line."""
    return {(int(t), key): dp["id"] for t, tpl in header["templates"].items()
            for key, dp in tpl["datapoints"].items()}  # fmt: skip


def expected_rows(lines: Iterable[dict[str, Any]]) -> Expected:
    """Readings (the header maps each reading's key to its datapoint id) and events."""
    expected = Expected()
    ids: dict[tuple[int, str], int] = {}
    for line in lines:
        if line["type"] == "header":
            ids = datapoint_ids(line)
        elif line["type"] == "publish":
            expected.published += 1
            ts = to_epoch_us(parse_device_timestamp(line["timestamp"]))
            for key, value in line["readings"].items():
                expected.readings.add(
                    (ts, line["device_id"], ids[(line["template_id"], key)], value)
                )
            if line["kind"] != "sensor":
                expected.events[(ts, line["device_id"])] += 1
    return expected
