"""The latest-value table with several workers (issue 19 item 2): entries per raw partition,
changelog partition = raw partition, reads of the owned partitions only, parts combined."""

from __future__ import annotations

import json

from f2pipe_processor.latest import Entry, LatestTable, combine, lookup, table_key


class Backend:
    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}

    def store(self) -> dict[str, Entry]:
        return self.data

    def changelog_topic(self) -> str:
        return "app-latest-v2-changelog"

    def changelog_key(self, key: str) -> bytes:
        return json.dumps(key).encode()

    def changelog_value(self, entry: Entry) -> bytes:
        return json.dumps(entry).encode()


def test_an_entry_goes_to_the_changelog_partition_of_its_raw_partition() -> None:
    backend = Backend()
    table = LatestTable(backend)
    table.write(2, {7: {1: (100, 20.0, "temperature")}})
    table.write(0, {8: {2: (100, 1.0, "door")}})
    records = sorted(table.flush(), key=lambda r: r.partition or 0)
    assert [(r.key, r.partition) for r in records] == [(b'"0:8"', 0), (b'"2:7"', 2)]
    assert {r.topic for r in records} == {"app-latest-v2-changelog"}
    assert json.loads(records[1].value) == {"1": [100, 20.0, "temperature"]}


def test_a_device_seen_in_two_partitions_keeps_one_entry_in_each() -> None:
    # A device moved to another controller (another raw partition): each partition's owner
    # recovers its own entry, whichever worker owns the other.
    backend = Backend()
    table = LatestTable(backend)
    table.write(0, {7: {1: (100, 20.0, "temperature")}})
    table.write(1, {7: {1: (90, 19.0, "temperature"), 2: (95, 40.0, "humidity")}})
    assert backend.data[table_key(0, 7)] == {"1": [100, 20.0, "temperature"]}
    assert backend.data[table_key(1, 7)] == {
        "1": [90, 19.0, "temperature"],
        "2": [95, 40.0, "humidity"],
    }
    assert sorted(r.partition or 0 for r in table.flush()) == [0, 1]


def test_lookup_reads_the_named_partitions_only() -> None:
    # A worker's memory also holds standby copies and revoked partitions, which lag.
    store: dict[str, Entry] = {
        table_key(0, 7): {"1": [100, 20.0, "temperature"]},
        table_key(1, 7): {"1": [50, 5.0, "temperature"]},  # stale, not ours
        table_key(0, 8): {"1": [100, 1.0, "temperature"]},
    }
    assert lookup(store, 7, [0]) == {"1": [100, 20.0, "temperature"]}
    assert lookup(store, 7, [1, 2]) == {"1": [50, 5.0, "temperature"]}
    assert lookup(store, 7, [2]) == {}
    assert lookup(store, 9, [0, 1]) == {}


def test_combine_keeps_each_datapoints_newest_value() -> None:
    parts: list[Entry] = [
        {"1": [100, 20.0, "temperature"], "2": [80, 40.0, "humidity"]},
        {},
        {"1": [90, 19.0, "temperature"], "2": [85, 41.0, "humidity"], "3": [1, 0.0, "co2"]},
    ]
    assert combine(parts) == {
        "1": [100, 20.0, "temperature"],
        "2": [85, 41.0, "humidity"],
        "3": [1, 0.0, "co2"],
    }
    assert combine([]) == {}


def test_a_worker_advertises_the_address_it_listens_on() -> None:
    # The other workers ask it for its part of /latest there: a name resolving to another
    # loopback address (127.0.1.1 on Debian) would not reach a server bound to 127.0.0.1.
    import socket

    from f2pipe_processor.faust_adapter import advertised_url

    assert advertised_url("127.0.0.1", 6066) == "http://127.0.0.1:6066"
    assert advertised_url("::1", 6066) == "http://[::1]:6066"
    assert advertised_url("0.0.0.0", 6066) == f"http://{socket.gethostname()}:6066"


def test_a_changelog_replay_never_replaces_a_newer_value() -> None:
    # Faust replays the changelog over the worker's memory, which latest.py may have made
    # newer (written directly, flushed later): each datapoint keeps its newest value.
    from types import SimpleNamespace

    import faust

    from f2pipe_processor.faust_adapter import latest_table

    app = faust.App("test-latest-replay", store="memory://")
    table = latest_table(app, 3)
    table.data["1:7"] = {"1": [200, 21.0, "temperature"], "2": [100, 40.0, "humidity"]}

    def event(key: str, entry: Entry) -> SimpleNamespace:
        message = SimpleNamespace(partition=1, value=json.dumps(entry).encode())
        return SimpleNamespace(key=key, value=entry, message=message)

    table.apply_changelog_batch(
        [
            event("1:7", {"1": [150, 20.0, "temperature"], "2": [120, 41.0, "humidity"]}),
            event("1:8", {"1": [90, 5.0, "temperature"]}),
        ]
    )
    assert table.data["1:7"] == {"1": [200, 21.0, "temperature"], "2": [120, 41.0, "humidity"]}
    assert table.data["1:8"] == {"1": [90, 5.0, "temperature"]}
