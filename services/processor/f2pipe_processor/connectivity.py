"""Which controllers are online: a state per controller, transitions as events. No Faust here.

Every message of a registered controller that reaches the processor proves it online (also one
that is then dead-lettered for its payload; a MAC the registry does not know is no
controller). The state of a controller (key: its MAC) is ``[controller id, last_seen_us,
online, changed_us, raw partition]``, where last_seen is the bridge's ``received_at_us`` (not
the processor's clock, not the device's timestamp) and changed_us the time of the last
transition. It lives in a Faust table whose changelog partition is the controller's raw
partition (the bridge keys raw-iot-data by device), so the worker that processes a
controller's messages owns its state, and a restarted or new owner recovers it.

Transitions, each one event of kind ``connectivity`` (device: the controller's registry id,
data ``{"status", "last_seen"}``) in the processed stream, so the sink stores it:

- ``online`` at the received time of the first message of a never-seen or offline controller
  (in the processed record of that raw record);
- ``offline`` at ``last_seen + timeout``: by the timer (``check``) once the partition's clock
  passed that time, or by the next message when it arrives after a longer gap.

Both timestamps are functions of the messages' received times, never of when the processor
ran, so a replay after a crash writes the same events again (same primary key: stored once).
A partition's clock is the wall clock only while the worker is caught up on it (it processed
up to the partition's high watermark); while it lags (a backlog, a restart, a database
outage holding a record) the clock is the newest received time processed there, so no
controller is called offline because its messages wait unprocessed in Kafka.

Transitions go to the changelog with the output of their record (delivered before the record
is acked); last_seen changes are coalesced and flushed at every check, so a restarted worker's
state is at most one check interval older than the committed offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from f2pipe_processor.decoder import Heard
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.output import OutRecord
from f2pipe_shared.records import Event, Seen
from f2pipe_shared.timestamps import format_device_timestamp, from_epoch_us

log = logging.getLogger(__name__)

TABLE_NAME = "connectivity"
KIND = "connectivity"
ONLINE, OFFLINE = "online", "offline"
# The changelog is compacted; see latest.CHANGELOG_CONFIG for why these two settings.
CHANGELOG_CONFIG = {"segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"}
SEEN_REPORT_SECONDS = 10.0  # a controller's last_seen goes to the sink at most this often

# The state of one controller: [controller id, last_seen_us, online (0/1), changed_us,
# partition] (a list: the changelog is JSON).
State = list[int]
CID, LAST, ONL, CHANGED, PART = range(5)


class StateBackend(Protocol):
    """The table's store and its changelog's encoding (the Faust table in production)."""

    def store(self) -> MutableMapping[str, Any]: ...

    def changelog_topic(self) -> str: ...

    def changelog_key(self, key: str) -> bytes: ...

    def changelog_value(self, state: State) -> bytes: ...


class PartitionProgress(Protocol):
    """Where the worker stands on its raw partitions (the Faust consumer in production)."""

    def owned(self) -> Collection[int]:
        """The raw partitions assigned to this worker now."""
        ...

    def highwater(self, partition: int) -> int | None:
        """The offset the partition's next record will get; None while unknown."""
        ...

    def committed(self, partition: int) -> int | None:
        """The committed offset (the next to read); None while unknown."""
        ...


class Observed(NamedTuple):
    """What one raw record changed: events and last-seen reports for its processed record,
    and the changelog records of its transitions (delivered before the record is acked)."""

    events: list[Event]
    seen: tuple[Seen, ...]
    changelog: list[OutRecord]


class Checked(NamedTuple):
    """What a check found: offline events by raw partition, and changelog records."""

    offline: dict[int, list[Event]]
    changelog: list[OutRecord]


def connectivity_event(controller_id: int, at_us: int, status: str, last_seen_us: int) -> Event:
    last_seen = format_device_timestamp(from_epoch_us(last_seen_us))
    return Event(at_us, controller_id, KIND, {"status": status, "last_seen": last_seen})


@dataclass(eq=False)
class Connectivity:
    backend: StateBackend
    timeout_seconds: float
    metrics: ProcessorMetrics
    report_seconds: float = SEEN_REPORT_SECONDS
    _dirty: set[str] = field(default_factory=set, init=False)
    _reported: dict[str, int] = field(default_factory=dict, init=False)
    # Per raw partition, since its assignment: the next offset to process, and the newest
    # received time processed (the partition's clock while the worker lags).
    _next_offset: dict[int, int] = field(default_factory=dict, init=False)
    _newest_us: dict[int, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.timeout_us = int(self.timeout_seconds * 1e6)
        self.report_us = int(self.report_seconds * 1e6)

    # -- messages ------------------------------------------------------------------------

    def observe(
        self, partition: int, offset: int, heard: Mapping[str, Heard], *, holed: bool = False
    ) -> Observed:
        """A raw record's controllers: their states updated, transitions as events.

        ``holed``: the consumer skipped records of this partition (acks.Holes), not read
        again yet; a gap may be theirs, so no offline decision is made."""
        self._next_offset[partition] = offset + 1
        events: list[Event] = []
        seen: list[Seen] = []
        changed: list[str] = []
        store = self.backend.store()
        timeout, report = self.timeout_us, self.report_us
        for mac, (cid, first, last) in heard.items():
            if last > self._newest_us.get(partition, 0):
                self._newest_us[partition] = last
            state: State | None = store.get(mac)
            if state is None:
                state = [cid, last, 1, first, partition]
                events.append(connectivity_event(cid, first, ONLINE, first))
                changed.append(mac)
            elif state[ONL] and first - state[LAST] > timeout and not holed:
                # A gap longer than the timeout that no check saw (the worker was down or
                # lagging): the same offline event a check would have made, then online.
                events.append(self._offline_event(state))
                events.append(connectivity_event(cid, first, ONLINE, first))
                state = [cid, max(last, state[LAST]), 1, first, partition]
                changed.append(mac)
            elif not state[ONL] and last > state[LAST]:
                events.append(connectivity_event(cid, first, ONLINE, first))
                state = [cid, last, 1, first, partition]
                changed.append(mac)
            else:
                if state[ONL] and first == state[CHANGED]:
                    # The record that brought it online, processed again after a crash: the
                    # same event again (the sink stores it once), in case it was lost.
                    events.append(connectivity_event(cid, first, ONLINE, first))
                if last <= state[LAST] and cid == state[CID] and partition == state[PART]:
                    continue  # an older message, processed again: nothing new
                state = [cid, max(last, state[LAST]), state[ONL], state[CHANGED], partition]
                self._dirty.add(mac)
            store[mac] = state
            if last - self._reported.get(mac, 0) >= report or mac in changed:
                seen.append(Seen(cid, state[LAST]))
                self._reported[mac] = state[LAST]
        self._count(events)
        return Observed(events, tuple(seen), self._changelog(changed))

    def assigned(self, partitions: Iterable[int]) -> None:
        """Partitions (re)assigned: what we knew of their progress is stale."""
        for partition in partitions:
            self._next_offset.pop(partition, None)
            self._newest_us.pop(partition, None)

    # -- the timer -----------------------------------------------------------------------

    def check(
        self, now_us: int, progress: PartitionProgress, holed: Collection[int] = ()
    ) -> Checked:
        """Offline decisions for the partitions this worker owns (none for ``holed`` ones,
        see ``observe``), the gauges, and the changelog records of every state changed since
        the last check."""
        clocks = {
            p: None if p in holed else self._clock(p, now_us, progress) for p in progress.owned()
        }
        offline: dict[int, list[Event]] = {}
        changed: list[str] = []
        online = offline_count = 0
        store = self.backend.store()
        timeout = self.timeout_us
        for mac, state in store.items():
            partition = state[PART]
            if partition not in clocks:
                continue  # not ours (a standby copy, or a revoked partition)
            clock = clocks[partition]
            if state[ONL] and clock is not None and clock - state[LAST] > timeout:
                log.info(
                    "controller offline: nothing received for the timeout",
                    extra={"mac": mac, "controller_id": state[CID], "partition": partition,
                           "last_seen_us": state[LAST], "clock_us": clock,
                           "caught_up": clock == now_us,
                           "highwater": progress.highwater(partition),
                           "committed": progress.committed(partition),
                           "next_offset": self._next_offset.get(partition)},
                )  # fmt: skip
                offline.setdefault(partition, []).append(self._offline_event(state))
                state[ONL], state[CHANGED] = 0, state[LAST] + timeout
                changed.append(mac)
            if state[ONL]:
                online += 1
            else:
                offline_count += 1
        self.metrics.controllers_online.set(online)
        self.metrics.controllers_offline.set(offline_count)
        for events in offline.values():
            self._count(events)
        # Only states of partitions still ours: a revoked partition's new owner writes its own.
        dirty = [
            mac
            for mac in self._dirty - set(changed)
            if (state := store.get(mac)) is not None and state[PART] in clocks
        ]
        self._dirty = set()
        return Checked(offline, self._changelog([*changed, *dirty]))

    def _clock(self, partition: int, now_us: int, progress: PartitionProgress) -> int | None:
        """Now, if the worker is caught up on the partition; else how far it got."""
        highwater = progress.highwater(partition)
        position = max(self._next_offset.get(partition, -1), progress.committed(partition) or -1)
        if highwater is not None and position >= highwater:
            return now_us
        return self._newest_us.get(partition)

    # -- helpers -------------------------------------------------------------------------

    def _offline_event(self, state: State) -> Event:
        last = state[LAST]
        return connectivity_event(state[CID], last + self.timeout_us, OFFLINE, last)

    def _changelog(self, macs: Iterable[str]) -> list[OutRecord]:
        backend = self.backend
        store = backend.store()
        topic = backend.changelog_topic()
        records = []
        for mac in macs:
            state = store[mac]
            records.append(
                OutRecord(
                    topic,
                    backend.changelog_key(mac),
                    backend.changelog_value(state),
                    None,
                    state[PART],
                )
            )
        return records

    def _count(self, events: Sequence[Event]) -> None:
        for event in events:
            self.metrics.connectivity_transitions.labels(event.data["status"]).inc()
