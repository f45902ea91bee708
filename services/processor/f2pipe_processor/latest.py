"""The last value of every (device, datapoint): a table, served at /latest/<device_id>.

One table entry per device (key: the device id as text), holding each datapoint's newest
``[timestamp_us, value, datapoint key]``. A batch updates each device it touched once; the
changed devices go to the changelog every PROCESSOR_LATEST_FLUSH_SECONDS (``flush``).

Faust's own ``table[key] = value`` sends one changelog record through aiokafka per write,
with a future, a buffer slot and several event-loop callbacks each: measured at ~28 us per
write, it was the processor's largest cost (one write per message in a large fleet).
``LatestTable`` updates the table's store directly, and ``flush`` returns the changelog
records, serialised and partitioned exactly as Faust would (the table's serializers,
Faust's partitioner: ``faust_adapter.FaustTableBackend``), for librdkafka; recovery reads
them like any Faust changelog. After a kill -9, values changed within the last flush interval
come back with the records processed again or with the device's next message. No Faust here.

The table is partitioned by key (``use_partitioner``), not by the raw record's partition:
then ``table_route`` can send a request for a device to the worker holding it without
knowing which controller (and so which raw partition) the device belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol

from f2pipe_processor.decoder import LatestValues
from f2pipe_processor.output import OutRecord
from f2pipe_shared.timestamps import format_device_timestamp, from_epoch_us

TABLE_NAME = "latest"
# A restarted worker replays the changelog (the table lives in memory): Kafka compacts it
# (Faust's default policy) only once a segment closes, so close one every 10 minutes and
# compact eagerly, or the replay grows with the changelog's 1 GB default segment. (Tansu, the
# development broker, does not compact at all.)
CHANGELOG_CONFIG = {"segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"}

# A device's entry: datapoint id (as text: the changelog is JSON) -> [timestamp_us, value, key].
Entry = dict[str, list[Any]]


class TableBackend(Protocol):
    """The table's storage and its changelog's encoding (the Faust table in production)."""

    def store(self) -> MutableMapping[str, Entry]: ...

    def changelog_topic(self) -> str: ...

    def changelog_key(self, key: str) -> tuple[bytes, int]:
        """The serialised key and the changelog partition it belongs to."""
        ...

    def changelog_value(self, entry: Entry) -> bytes: ...


def merge(
    current: Mapping[str, list[Any]] | None, batch: Mapping[int, tuple[int, float, str]]
) -> Entry | None:
    """``current`` with the batch's newer values; None when nothing changed."""
    merged = dict(current) if current else {}
    changed = False
    for dp, (ts, value, key) in batch.items():
        name = str(dp)  # JSON object keys are strings: the changelog is JSON
        old = merged.get(name)
        if old is None or old[0] <= ts:
            merged[name] = [ts, value, key]
            changed = True
    return merged if changed else None


class LatestTable:
    """The `ports.LatestStore` of production, over the Faust table's store."""

    def __init__(self, backend: TableBackend) -> None:
        self.backend = backend
        # Device -> (serialised key, partition): both fixed for the table's life, and
        # Faust's murmur2 partitioner is pure Python.
        self._keys: dict[int, tuple[bytes, int]] = {}
        self._dirty: set[int] = set()

    def write(self, latest: LatestValues) -> None:
        """Apply the batch's newest values; the devices changed wait for ``flush``."""
        store = self.backend.store()  # the store itself: no per-key send by Faust
        for device, values in latest.items():
            key = str(device)
            merged = merge(store.get(key), values)
            if merged is not None:
                store[key] = merged
                self._dirty.add(device)

    def flush(self) -> list[OutRecord]:
        """The changelog records of every device changed since the last flush.

        Coalesced: a device's value goes to the changelog once per flush, not once per
        batch, so a restarted worker replays a fraction of the writes (measured: a batch of
        500 messages touched ~200 devices, so a per-batch changelog grew at ~0.4 records per
        message and its replay held a restarted worker for over a minute).
        """
        backend = self.backend
        store = backend.store()
        topic = backend.changelog_topic()
        keys = self._keys
        records = []
        dirty, self._dirty = self._dirty, set()
        for device in dirty:
            cached = keys.get(device)
            if cached is None:
                cached = keys[device] = backend.changelog_key(str(device))
            value = backend.changelog_value(store[str(device)])
            records.append(OutRecord(topic, cached[0], value, None, cached[1]))
        return records


def render(device_id: int, stored: Mapping[str, list[Any]]) -> dict[str, Any]:
    """The JSON /latest/<device_id> returns."""
    points = [
        {
            "datapoint_id": int(dp),
            "key": key,
            "timestamp": format_device_timestamp(from_epoch_us(ts)),
            "timestamp_us": ts,
            "value": value,
        }
        for dp, (ts, value, key) in sorted(stored.items(), key=lambda item: int(item[0]))
    ]
    return {"device_id": device_id, "datapoints": points}
