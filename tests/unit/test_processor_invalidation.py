"""The registry listener's catch-up bookkeeping, without a database: which missed changes it
applies, and how its snapshot moves (the database side is test_processor_caches.py)."""

from __future__ import annotations

import time

from f2pipe_processor.invalidation import RegistryListener, Synced, coalesce, parse_change, xmax
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.resolver import Change, Resolver
from tests.unit.test_processor import FakeCache, FakeRegistry


def test_missed_changes_become_one_change_per_table() -> None:
    payloads = [
        '{"table": "pins", "op": "UPDATE", "ids": [3], "connector_ids": [7]}',
        '{"table": "pins", "op": "DELETE", "ids": [4, 3], "connector_ids": [8]}',
        '{"table": "devices", "op": "UPDATE", "ids": [9], "macs": ["aabbccddee01"]}',
    ]
    merged = coalesce(parse_change(p) for p in payloads)
    assert merged is not None
    by_table = {c.table: c for c in merged}
    assert set(by_table) == {"pins", "devices"}
    assert sorted(by_table["pins"].ids or ()) == [3, 4]
    assert sorted(by_table["pins"].parents) == [7, 8]
    assert by_table["devices"] == Change("devices", (9,), ("aabbccddee01",))
    assert coalesce([]) == []


def test_a_missed_change_without_ids_or_unreadable_means_flush() -> None:
    truncate = parse_change('{"table": "pins", "op": "TRUNCATE", "ids": null}')
    assert coalesce([truncate]) is None
    assert coalesce([parse_change("not json")]) is None


def test_xmax_of_a_snapshot() -> None:
    assert xmax("745:750:745,748") == 750
    assert xmax("12:12:") == 12


def test_a_marker_moves_the_snapshot_to_its_own_and_forgets_older_ones() -> None:
    metrics = ProcessorMetrics()
    listener = RegistryListener("", Resolver(FakeRegistry({}, {}), FakeCache(), metrics=metrics))
    now = time.monotonic()
    listener._markers = {
        0: Synced("10:11:", now),
        1: Synced("11:12:", now),
        2: Synced("12:13:", now),
    }
    listener._marker_arrived("1")
    assert listener._synced == Synced("11:12:", now)
    assert list(listener._markers) == [2]
    listener._marker_arrived("7")  # not one of ours (or long gone): ignored
    listener._marker_arrived("x")
    assert listener._synced == Synced("11:12:", now)
