"""connectivity.py without Faust: transitions, their timestamps, lag and replays."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from f2pipe_processor.connectivity import Connectivity
from f2pipe_processor.decoder import Heard, heard_in
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.registry import Location, Resolved, Unresolved
from f2pipe_shared.deadletters import Reason
from f2pipe_shared.records import Event, RawMessage, Seen
from f2pipe_shared.topics import parse_topic

S = 1_000_000
T0 = 1_796_000_000_000_000
TIMEOUT = 3.0


class States:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def store(self) -> dict[str, Any]:
        return self.data

    def changelog_topic(self) -> str:
        return "connectivity-changelog"

    def changelog_key(self, key: str) -> bytes:
        return key.encode()

    def changelog_value(self, state: list[int]) -> bytes:
        return json.dumps(state).encode()


class Progress:
    def __init__(self, owned: set[int], highwater: dict[int, int] | None = None) -> None:
        self._owned = owned
        self.highwaters = highwater or {}

    def owned(self) -> set[int]:
        return self._owned

    def highwater(self, partition: int) -> int | None:
        return self.highwaters.get(partition)

    def committed(self, partition: int) -> int | None:
        return None


def connectivity(states: States | None = None) -> Connectivity:
    return Connectivity(states or States(), TIMEOUT, ProcessorMetrics())


def statuses(events: list[Event]) -> list[tuple[int, int, str]]:
    return [(e.timestamp_us, e.device_id, e.data["status"]) for e in events]


def test_first_message_online_silence_offline_next_message_online() -> None:
    c = connectivity()
    first = c.observe(0, 0, {"aa": Heard(7, T0, T0 + 100)})
    assert statuses(first.events) == [(T0, 7, "online")]
    assert first.events[0].kind == "connectivity"
    assert first.events[0].data["last_seen"] == "2026-11-30 00:53:20.000000"
    assert first.seen == (Seen(7, T0 + 100),)
    assert [r.partition for r in first.changelog] == [0]  # the raw partition's changelog
    # Within the timeout: no event; last-seen reported at most every 10 s.
    assert c.observe(0, 1, {"aa": Heard(7, T0 + 2 * S, T0 + 2 * S)}) == ([], (), [])
    assert c.observe(0, 2, {"aa": Heard(7, T0 + 11 * S, T0 + 11 * S)}).seen == (
        Seen(7, T0 + 11 * S),
    )
    caught_up = Progress({0}, {0: 3})  # processed up to the high watermark: the clock is now
    assert c.check(T0 + 14 * S, caught_up).offline == {}
    checked = c.check(T0 + 14 * S + 1, caught_up)
    assert statuses(checked.offline[0]) == [(T0 + 14 * S, 7, "offline")]
    assert checked.offline[0][0].data["last_seen"].endswith("00:53:31.000000")
    assert len(checked.changelog) == 1
    assert c.check(T0 + 60 * S, caught_up).offline == {}  # once
    back = c.observe(0, 3, {"aa": Heard(7, T0 + 61 * S, T0 + 62 * S)})
    assert statuses(back.events) == [(T0 + 61 * S, 7, "online")]


def test_no_offline_while_the_worker_lags_on_the_partition() -> None:
    c = connectivity()
    c.observe(1, 10, {"aa": Heard(7, T0, T0), "bb": Heard(8, T0, T0)})
    lagging = Progress({1}, {1: 500})  # records wait in Kafka: the clock is what was processed
    assert c.check(T0 + 100 * S, lagging).offline == {}
    # The backlog shows bb sent on while aa was silent: aa offline, at the same time as if
    # the worker had kept up.
    c.observe(1, 11, {"bb": Heard(8, T0 + 4 * S, T0 + 4 * S)})
    checked = c.check(T0 + 100 * S, lagging)
    assert statuses(checked.offline[1]) == [(T0 + 3 * S, 7, "offline")]


def test_partitions_not_owned_are_not_judged() -> None:
    c = connectivity()
    c.observe(2, 0, {"aa": Heard(7, T0, T0)})
    assert c.check(T0 + 100 * S, Progress({0, 1}, {0: 0, 1: 0, 2: 1})).offline == {}


def test_a_gap_no_check_saw_gives_the_same_events_as_a_check() -> None:
    c = connectivity()
    c.observe(0, 0, {"aa": Heard(7, T0, T0)})
    late = c.observe(0, 1, {"aa": Heard(7, T0 + 9 * S, T0 + 9 * S)})
    assert statuses(late.events) == [(T0 + 3 * S, 7, "offline"), (T0 + 9 * S, 7, "online")]


def test_a_replay_after_a_crash_writes_the_same_events_and_no_others() -> None:
    records = [{"aa": Heard(7, T0 + i * S, T0 + i * S)} for i in range(5)]  # one message a second
    records.append({"aa": Heard(7, T0 + 20 * S, T0 + 20 * S)})  # back after a gap
    first = connectivity()
    events = [e for i, r in enumerate(records) for e in first.observe(0, i, r).events]
    # The changelog held the state as of record 2; records 2.. are processed again.
    recovered = States()
    second = connectivity(recovered)
    for i, r in enumerate(records[:3]):
        second.observe(0, i, r)
    restarted = connectivity(copy.deepcopy(recovered))
    restarted.assigned([0])
    replayed = [e for i, r in enumerate(records[2:], 2) for e in restarted.observe(0, i, r).events]
    # The same transitions again, at the same times: the sink stores them once.
    assert statuses(replayed) == statuses(events)[1:]
    assert statuses(events) == [
        (T0, 7, "online"), (T0 + 7 * S, 7, "offline"), (T0 + 20 * S, 7, "online")
    ]  # fmt: skip


def test_messages_of_unknown_macs_and_commands_prove_nothing() -> None:
    known = "tele/f2-aabbccddee01/sensor-mode/J1/sensor-1"
    bad_payload = "tele/f2-aabbccddee01/sensor-mode/J2/sensor-1"
    unknown = "tele/f2-aabbccddee99/sensor-mode/J1/sensor-1"
    messages = [
        RawMessage(known, b"{}", T0 + 5),
        RawMessage(bad_payload, b"not json", T0 + 9),
        RawMessage(known, b"{}", T0 + 1),
        RawMessage(unknown, b"{}", T0 + 20),
        RawMessage("not a topic", b"{}", T0 + 30),
    ]
    topics = {t: parse_topic(t) for t in (known, bad_payload, unknown)}
    locations: dict[str, Resolved] = {
        known: Location(11, 1, 3, 4),
        bad_payload: Unresolved(Reason.unmapped_position, "nothing there", 3, 5),
        unknown: Unresolved(Reason.unknown_mac, "no such MAC", None, None),
    }
    assert heard_in(messages, topics, locations) == {"aabbccddee01": Heard(3, T0 + 1, T0 + 9)}


def test_no_offline_decision_on_a_partition_faust_skipped_records_of() -> None:
    # The skipped records are read again, or wait for a restart (acks.Holes): a gap may be
    # theirs.
    c = connectivity()
    c.observe(0, 0, {"aa": Heard(7, T0, T0)})
    assert c.observe(0, 50, {"aa": Heard(7, T0 + 9 * S, T0 + 9 * S)}, holed=True).events == []
    assert c.check(T0 + 100 * S, Progress({0}, {0: 51}), holed={0}).offline == {}
    assert statuses(c.check(T0 + 100 * S, Progress({0}, {0: 51})).offline[0]) == [
        (T0 + 12 * S, 7, "offline")
    ]


def test_the_timeout_is_three_publish_intervals_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from f2pipe_processor.main import build
    from f2pipe_processor.settings import Settings

    monkeypatch.setenv("PUBLISH_INTERVAL", "20")
    assert Settings.load().connectivity_timeout == 60.0
    monkeypatch.setenv("CONNECTIVITY_TIMEOUT", "7.5")
    settings = Settings.load()
    assert settings.connectivity_timeout == 7.5
    processor = build(settings, partitions=3)  # no server is contacted
    try:
        assert processor.service.connectivity.timeout_seconds == 7.5
        assert processor.service.connectivity_interval == 1.875
        assert "connectivity" in processor.app.tables
    finally:
        processor.output.close(0)
