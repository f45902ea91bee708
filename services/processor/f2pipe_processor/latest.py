"""The last value of every (device, datapoint): a Faust table, served at /latest/<device_id>.

One table entry per device (key: the device id as text), holding each datapoint's newest
``[timestamp_us, value, datapoint key]``. A batch updates each device it touched once; the
changed devices go to the changelog every PROCESSOR_LATEST_FLUSH_SECONDS (``flush``).

Faust's own ``table[key] = value`` sends one changelog record through aiokafka per write,
with a future, a buffer slot and several event-loop callbacks each: measured at ~28 us per
write, it was the processor's largest cost (one write per message in a large fleet).
``LatestTable`` updates the table's store directly, and ``flush`` returns the changelog
records, serialised and partitioned exactly as Faust would (the table's serializers,
Faust's partitioner), for librdkafka; recovery reads them like any Faust changelog. After a
kill -9, values changed within the last flush interval come back with the records processed
again or with the device's next message.

The table is partitioned by key (``use_partitioner``), not by the raw record's partition:
then ``table_route`` can send a request for a device to the worker holding it without
knowing which controller (and so which raw partition) the device belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust
from faust.web import Request, Response, View

from f2pipe_processor.decoder import LatestValues
from f2pipe_processor.output import OutRecord
from f2pipe_shared.timestamps import format_device_timestamp, from_epoch_us

TABLE_NAME = "latest"


def latest_table(app: faust.App, partitions: int) -> Any:
    return app.Table(
        TABLE_NAME,
        default=None,
        partitions=partitions,
        key_type=str,
        use_partitioner=True,
        help="device id -> {datapoint id: [timestamp_us, value, key]}",
        # A restarted worker replays the changelog (the table lives in memory): Kafka compacts
        # it (Faust's default policy) only once a segment closes, so close one every
        # 10 minutes and compact eagerly, or the replay grows with the changelog's 1 GB
        # default segment. (Tansu, the development broker, does not compact at all.)
        extra_topic_configs=CHANGELOG_CONFIG,
    )


CHANGELOG_CONFIG = {"segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"}


def merge(
    current: Mapping[str, list[Any]] | None, batch: Mapping[int, tuple[int, float, str]]
) -> dict[str, list[Any]] | None:
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
    def __init__(self, app: faust.App, partitions: int) -> None:
        self.app = app
        self.table = latest_table(app, partitions)
        # Device -> (serialised key, partition): both fixed for the table's life, and
        # Faust's murmur2 partitioner is pure Python.
        self._keys: dict[int, tuple[bytes, int]] = {}
        self._dirty: set[int] = set()

    def get(self, device_id: int) -> Mapping[str, list[Any]] | None:
        stored: Mapping[str, list[Any]] | None = self.table.get(str(device_id))
        return stored

    def write(self, latest: LatestValues) -> None:
        """Apply the batch's newest values; the devices changed wait for ``flush``."""
        store = self.table.data  # the store itself: no per-key send by Faust
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
        table = self.table
        store = table.data
        changelog = table.changelog_topic
        topic = changelog.get_topic_name()
        keys = self._keys
        records = []
        dirty, self._dirty = self._dirty, set()
        for device in dirty:
            cached = keys.get(device)
            if cached is None:
                key_bytes = changelog.prepare_key(str(device), table.key_serializer)[0]
                # Faust's partitioner, as table_route uses it to find the key's worker.
                partition = self.app.producer.key_partition(topic, key_bytes).partition
                cached = keys[device] = (key_bytes, partition)
            value = changelog.prepare_value(store[str(device)], table.value_serializer)[0]
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


def register_views(app: faust.App, latest: LatestTable) -> None:
    @app.page("/latest/{device_id}")
    @app.table_route(table=latest.table, match_info="device_id")
    async def latest_values(self: View, request: Request, device_id: str) -> Response:
        if not device_id.isdigit():
            return self.json({"error": "device id must be an integer"}, status=400)
        stored = latest.get(int(device_id))
        if not stored:
            return self.json({"error": f"no values for device {device_id} (yet)"}, status=404)
        return self.json(render(int(device_id), stored))
