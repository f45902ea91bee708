"""The last value of every (device, datapoint): a table, served at /latest/<device_id>.

One table entry per (raw partition, device) (key ``"<partition>:<device id>"``), holding each
datapoint's newest ``[timestamp_us, value, datapoint key]`` seen in that raw partition. A
batch updates each device it touched once; the changed entries go to the changelog every
PROCESSOR_LATEST_FLUSH_SECONDS (``flush``) and when the worker gives its partitions up.

Several workers: the table is co-partitioned with the raw topic (an entry's changelog
partition is the raw partition it was written from), so Faust's assignor gives the worker
that owns raw partition P the table partition P, and a new owner of P (after a rebalance)
recovers P's entries from the changelog. A worker's memory also holds entries of partitions
it does not own (standby copies, which lag by a flush interval, and partitions taken away
from it): ``lookup`` reads only the partitions it names, and the page (faust_adapter.py)
names the ones the worker owns now. Which partition a device's values are in depends on its
controller (the bridge partitions by controller MAC), so the page asks every worker for its
part and ``combine`` keeps each datapoint's newest value: no registry lookup, and a device
that moved to another controller still shows its newest value of every datapoint.

Faust's own ``table[key] = value`` sends one changelog record through aiokafka per write,
with a future, a buffer slot and several event-loop callbacks each: measured at ~28 us per
write, it was the processor's largest cost (one write per message in a large fleet).
``LatestTable`` updates the table's store directly, and ``flush`` returns the changelog
records, serialised as Faust would (the table's serializers: ``faust_adapter.
FaustTableBackend``), for librdkafka; recovery reads them like any Faust changelog. After a
kill -9, values changed within the last flush interval come back with the records processed
again or with the device's next message. No Faust here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Protocol

from f2pipe_processor.decoder import LatestValues
from f2pipe_processor.output import OutRecord
from f2pipe_shared.timestamps import format_device_timestamp, from_epoch_us

# "-v2": keys are "<partition>:<device>" in the raw partition's changelog partition; the
# changelog of the former "latest" table (keyed by device, Faust's partitioner) is not read.
TABLE_NAME = "latest-v2"
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

    def changelog_key(self, key: str) -> bytes:
        """The serialised key."""
        ...

    def changelog_value(self, entry: Entry) -> bytes: ...


def table_key(partition: int, device: int) -> str:
    """The entry of ``device``'s values that came through raw ``partition``."""
    return f"{partition}:{device}"


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


def combine(entries: Iterable[Mapping[str, list[Any]]]) -> Entry:
    """One entry from several (partitions, workers): each datapoint's newest value."""
    combined: Entry = {}
    for entry in entries:
        for dp, point in entry.items():
            old = combined.get(dp)
            if old is None or old[0] < point[0]:
                combined[dp] = point
    return combined


def lookup(store: Mapping[str, Entry], device: int, partitions: Iterable[int]) -> Entry:
    """``device``'s values in ``partitions`` only (those the worker owns: see the docstring)."""
    return combine(
        entry for p in partitions if (entry := store.get(table_key(p, device))) is not None
    )


class LatestTable:
    """The `ports.LatestStore` of production, over the Faust table's store."""

    def __init__(self, backend: TableBackend) -> None:
        self.backend = backend
        self._keys: dict[str, bytes] = {}  # table key -> serialised: fixed for the table's life
        self._dirty: dict[str, int] = {}  # table key -> its (raw and changelog) partition

    def write(self, partition: int, latest: LatestValues) -> None:
        """Apply the newest values of a batch of raw ``partition``; the entries changed wait
        for ``flush``."""
        store = self.backend.store()  # the store itself: no per-key send by Faust
        dirty = self._dirty
        for device, values in latest.items():
            key = f"{partition}:{device}"  # table_key, inline: once per device and batch
            merged = merge(store.get(key), values)
            if merged is not None:
                store[key] = merged
                dirty[key] = partition

    def flush(self) -> list[OutRecord]:
        """The changelog records of every entry changed since the last flush.

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
        dirty, self._dirty = self._dirty, {}
        for key, partition in dirty.items():
            serialised = keys.get(key)
            if serialised is None:
                serialised = keys[key] = backend.changelog_key(key)
            value = backend.changelog_value(store[key])
            records.append(OutRecord(topic, serialised, value, None, partition))
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
