"""Faust behind one door: the only module of the processor that imports faust, mode or aiokafka.

Checked against the versions in ``PINNED`` (uv.lock; faust-streaming drives aiokafka
directly, so the two are pinned together in pyproject.toml). Every place where the processor
overrides, calls or relies on something of Faust's beyond its documented API is a ``Hook`` in
``HOOKS``, with the reason it exists; tests/unit/test_processor.py fails, naming these hooks,
when an installed version differs from ``PINNED`` or one of them is gone. Upgrading Faust means:
re-read each hook's code in the new version, re-run the kill -9 test
(tests/integration/test_processor_worker.py), then update ``PINNED``.

What is here:

- ``create_app``: the Faust app with the processor's settings (``ProcessorApp``);
- ``serve``: the agent, timer, task and web pages that hand events to ``ProcessorService``
  (service.py), which knows nothing of Faust;
- ``SafeSeekConsumer``: Faust's aiokafka consumer with a restart bug closed (below);
- ``latest_table`` (a ``LatestFaustTable``, whose changelog replay keeps newer values) and
  ``FaustTableBackend``: the last-value table's storage and changelog encoding for latest.py;
  ``LatestPeers``: the workers' parts of it, for /latest;
- ``connectivity_table``, ``FaustStateBackend`` and ``FaustProgress``: the controllers'
  connectivity state, its changelog, and where the consumer stands (connectivity.py);
- ``run_worker``: Faust's worker with f2pipe's logging, until SIGTERM/SIGINT.

The restart bug (faust-streaming 0.15.3 with aiokafka 0.14.0, reproduced by the kill -9
tests): Faust hands aiokafka's ``Fetcher.fetched_records`` its *live* set of active
partitions, and aiokafka drains every assigned partition when that set is empty. When a
worker gets its partitions, recovery resumes the stream partitions and seeks them to the
committed offsets (``Recovery.on_recovery_completed``); the changelogs are paused by then, so
while the stream partitions are paused for the seek the set is empty, and a fetch landing
then (often the refetch the seek itself asked for) was drained, moving aiokafka's position
past it, and dropped by Faust as paused. The next record arrived with a hole before it, and
Faust's gap handling (``Consumer._add_gap``, meant for compacted topics and transaction
markers) marked the hole processed: the next commit skipped those records for good. With
the hole guard below they stayed uncommitted instead, until a restart nobody made: 3 of 4
runs of the pipeline's kill -9 test ended with thousands of readings missing. The defences:

- the fetch drains through ``LiveSelection``, which reads an empty set as "none", not "all"
  (``ShortFetchConsumerThread._fetch_records``): the cause;
- the stream partitions stay paused from the seek until flow control is back on, so no
  record is handed to Faust while it would drop it (``perform_seek`` / ``resume_flow``);
- a hole in a topic that cannot have one (the raw topic) is never acked unprocessed:
  ``_add_gap`` hands it to ``acks.Holes`` and the partition is read again from the hole
  (``_reread``); offsets still empty on that read (transaction markers, records expired by
  retention) are marked processed, and a hole that does not resolve is left uncommitted for
  a restart;
- a partition nothing was committed of yet is sought to its beginning: aiokafka's
  ``seek_to_committed`` leaves it where the dropped records left it, and Faust, having no
  committed offset to compare with, sees no hole (a rebalance before a new group's first
  commit lost every record fetched before it: a CI failure of the kill -9 test).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any, cast

import aiokafka  # type: ignore[import-untyped]
import aiokafka.client  # type: ignore[import-untyped]
import aiokafka.consumer.fetcher  # type: ignore[import-untyped]
import faust
from aiokafka.errors import IllegalStateError, KafkaError  # type: ignore[import-untyped]
from aiokafka.protocol.metadata import MetadataRequest  # type: ignore[import-untyped]
from aiokafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]
from faust.assignor.leader_assignor import LeaderAssignor
from faust.assignor.partition_assignor import PartitionAssignor
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import Stream
from faust.tables import TableManager
from faust.tables.base import Collection
from faust.topics import Topic as FaustTopic
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from faust.web import Request, Response, View
from faust.web.base import BlueprintManager, Web

from f2pipe_processor import connectivity
from f2pipe_processor.acks import Ack, Commits, Holes, Verdict
from f2pipe_processor.latest import CHANGELOG_CONFIG, TABLE_NAME, Entry, combine, lookup, render
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.service import ProcessorService
from f2pipe_processor.settings import Settings
from f2pipe_shared.kafka import FETCH_MAX_WAIT_MS
from f2pipe_shared.logs import configure_logging
from f2pipe_shared.settings import CommonSettings, KafkaSettings

log = logging.getLogger(__name__)

TRUE_END_TIMEOUT_S = 5.0  # how long recovery waits for the fetch that checks a changelog's end

# The versions every hook below was read against (uv.lock).
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}


# --- The consumer -----------------------------------------------------------------------------


class LiveSelection:
    """Faust's live set of active partitions as aiokafka's ``Fetcher.fetched_records`` reads
    it, with one difference: an empty set selects nothing.

    aiokafka reads an empty selection as "every assigned partition" (``if partitions and tp
    not in partitions``). Faust hands it the live set, which can empty while the fetch waits:
    perform_seek pauses every stream partition (the changelogs are paused already once
    recovery is done). A fetch landing then (often the refetch the seek itself asked for) was
    drained in full, moving aiokafka's position past it, and dropped by Faust as paused: the
    records were never processed (a "hole" after nearly every restart under load).
    """

    __slots__ = ("_live",)

    def __init__(self, live: AbstractSet[TP]) -> None:
        self._live = live

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: object) -> bool:
        return tp in self._live


class ShortFetchConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: AbstractSet[TP] | None,
        timeout: float | None = None,  # noqa: ASYNC109 - Faust's signature
        max_records: int | None = None,
    ) -> Any:
        # None is Faust's "client only" (no group): every partition, as aiokafka means it.
        selection = None if active_partitions is None else LiveSelection(active_partitions)
        return await super()._fetch_records(
            consumer, cast(Any, selection), timeout=timeout, max_records=max_records
        )

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes fetch_max_wait_ms=1500, which Tansu waits out whenever a fetch finds
        # nothing new: up to 1.5 s more on every record's way (shared.kafka.FETCH_MAX_WAIT_MS).
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # Where table recovery reads the changelogs up to (Recovery._build_highwaters).
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return reported
        return await self._true_ends(reported)

    async def _true_ends(self, reported: Mapping[TP, int]) -> Mapping[TP, int]:
        """The end of each partition as a fetch of its last batch reports it.

        Tansu (the development broker) answers ListOffsets with the base offset of the last
        batch produced + 1, short of the end whenever that batch held several records (a
        fetch's high watermark is right). Recovery then stopped reading a changelog at the
        first record of its last batch (a restarted worker lost most last values), and a
        worker that had read further stopped on a ConsistencyError. On Kafka the two agree.
        """
        ends = {tp: end for tp, end in reported.items() if end}
        if not ends:
            return reported
        probe = self._create_client_consumer(cast(Any, self.transport))
        to_aiokafka = aiokafka_driver.ensure_aiokafka_TP
        found: dict[TP, int] = {}
        try:
            await probe.start()
            probe.assign([to_aiokafka(tp) for tp in ends])
            for tp, end in ends.items():
                probe.seek(to_aiokafka(tp), end - 1)  # the last batch's base offset
            deadline = monotonic() + TRUE_END_TIMEOUT_S
            while len(found) < len(ends) and monotonic() < deadline:
                await probe.getmany(timeout_ms=100)
                for tp in ends.keys() - found.keys():
                    highwater = probe.highwater(to_aiokafka(tp))
                    if highwater is not None:
                        found[tp] = max(highwater, ends[tp])
        except (KafkaError, OSError) as exc:  # TimeoutError included
            log.warning("could not check the changelogs' ends", extra={"error": str(exc)})
        finally:
            await probe.stop()
        corrected = {tp: end for tp, end in found.items() if end != reported[tp]}
        if corrected:
            shown = {
                f"{tp.topic}[{tp.partition}]": [reported[tp], end] for tp, end in corrected.items()
            }
            log.info("the broker understated partition ends (reported, fetched); reading to "
                     "the fetched ones", extra={"partitions": shown})  # fmt: skip
        return {**reported, **found}

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        # Faust's own crashes the worker on any refused commit but "already rebalanced" (a
        # race with a rebalance, a broker's passing error): a restart and a rebalance of the
        # whole group for what the next commit does anyway. Refused, it is counted instead
        # (acks.Commits); what it held is committed next time or processed again.
        commits: Commits | None = getattr(self.consumer.app, "f2pipe_commits", None)
        assigned = self.assignment()
        ours = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not ours:
            return False  # a rebalance took them: their next owner processes them again
        now = monotonic()
        to_aiokafka = aiokafka_driver.ensure_aiokafka_TP
        committing = {to_aiokafka(tp): OffsetAndMetadata(o, "") for tp, o in ours.items()}
        try:
            await self._ensure_consumer().commit(committing)
        except (KafkaError, IllegalStateError) as exc:
            if commits is not None:
                commits.failed(exc)
            return False
        self.tp_last_committed_at.update(dict.fromkeys(ours, now))
        if commits is not None:
            commits.succeeded()
        return True


class SafeSeekConsumer(aiokafka_driver.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: set[TP] = set()
        self._rereading: set[TP] = set()  # paused until their re-read's seek (acks.Holes)
        self._reread_tasks: set[asyncio.Future[None]] = set()
        self._next_fetch = asyncio.Event()  # set when the fetch after the current one starts

    def _new_consumer_thread(self) -> ShortFetchConsumerThread:
        return ShortFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        # A re-read waiting for its seek is moot: every partition goes to its committed
        # offset, which is before any hole (acks.Holes), and Faust has resumed them all.
        for task in self._reread_tasks:
            task.cancel()
        self._rereading.clear()
        # Faust resumed these partitions just before calling us: hold them until the flow
        # is on again, or what they fetch during the seek is dropped.
        active = {tp for tp in self._get_active_partitions() if not self._is_changelog_tp(tp)}
        self._held |= active
        self.pause_partitions(active)
        await super().perform_seek()
        # aiokafka seeks only to a committed offset > 0: a partition nothing was committed of
        # yet keeps the position its last fetch left, past records Faust fetched and dropped
        # (a rebalance before the first commit), and Faust sees no hole there (it has no
        # offset to compare with). Such a partition starts again from its beginning.
        uncommitted = [tp for tp in active if not self._committed_offset.get(tp)]
        if uncommitted:
            await self._thread.seek_to_beginning(
                *(aiokafka.TopicPartition(tp.topic, tp.partition) for tp in uncommitted)
            )

    def resume_flow(self) -> None:
        super().resume_flow()
        if self._held:
            held, self._held = self._held, set()
            self.resume_partitions(held & self.assignment())

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Faust calls this on reading offset `offset_to` when the last offset it read was
        # `offset_from - 1`, before handing `offset_to` to the stream; its own version marks
        # [offset_from, offset_to] processed, the record it is about to hand out included.
        holes: Holes | None = getattr(self.app, "f2pipe_holes", None)
        if holes is None or not holes.guards(tp.topic):
            await super()._add_gap(tp, offset_from, offset_to)
            return
        # Never ack what was not processed: read the hole again (acks.Holes).
        verdict = holes.skipped(tp.topic, tp.partition, offset_from, offset_to)
        if verdict is Verdict.NO_RECORDS:
            await super()._add_gap(tp, offset_from, offset_to - 1)  # exactly the empty ones
        elif verdict is Verdict.REREAD:
            # Nothing more of this partition is handed out until the seek: the rest of this
            # fetch is what the seek goes back before. Faust hands out a partition whose
            # stream buffer is full even when it is not active: not this one. (Faust hands
            # us aiokafka's partition type here; its active set asserts its own.)
            tp = TP(tp.topic, tp.partition)
            self.pause_partitions([tp])
            self._buffered_partitions.discard(tp)
            self._rereading.add(tp)
            task = asyncio.ensure_future(self._reread(tp, offset_from, self._next_fetch))
            self._reread_tasks.add(task)
            task.add_done_callback(self._reread_tasks.discard)

    async def _reread(self, tp: TP, first: int, next_fetch: asyncio.Event) -> None:
        """Seek ``tp`` back to ``first`` once Faust is done with this fetch (``next_fetch``).

        Not before: Faust records the record after the hole as read once the stream took it
        (a seek before would be undone), and the rest of that fetch is still being handed out
        (its records of ``tp``, resumed, would look like the hole read again and empty, and
        be marked processed unread). However long that takes: a stream that waits for
        PostgreSQL holds the fetch for as long, and acks.Holes leaves the hole for a restart
        meanwhile (a later report of it is then left too, never taken as empty)."""
        await next_fetch.wait()
        # (A rebalance's seek cancels the wait: Faust seeks and resumes every partition.)
        self._rereading.discard(tp)
        try:
            if tp in self.assignment():  # else its next owner starts from the committed offset
                await self.seek(tp, first)
                # Faust's seek records `first` as read (gaps are measured from the last offset
                # read): the record at `first` must count as the next one.
                self._read_offset[tp] = first - 1
        except Exception as exc:  # the hole stays unacked; acks.Holes gives up on it in time
            log.error(
                "could not seek back to skipped raw records",
                extra={"partition": tp.partition, "first": first, "error": repr(exc)},
            )
        finally:
            if tp not in self._held:  # held for a rebalance's seek: resume_flow resumes it
                self.resume_partitions([tp])

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109
        # A new fetch: the one before has been handed out.
        started, self._next_fetch = self._next_fetch, asyncio.Event()
        started.set()
        async for item in super().getmany(timeout):
            yield item

    def on_buffer_full(self, tp: TP) -> None:
        if tp not in self._rereading:  # (see _add_gap)
            super().on_buffer_full(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        if tp not in self._rereading:  # would resume it before its seek
            super().on_buffer_drop(tp)


class SafeSeekTransport(aiokafka_driver.Transport):
    Consumer = SafeSeekConsumer


class PromptTableManager(TableManager):
    """Faust's table manager without the second it sleeps before wiring the tables'
    changelogs into recovery (a second of every start and restart): both tables are declared
    in main.build, before the worker starts, so there is nothing to wait for."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


# --- The app ------------------------------------------------------------------------------------


class ProcessorApp(faust.App):
    """Faust's app with our consumer and a bounded wait for in-flight records.

    On shutdown and rebalance Faust waits until every event an agent took is acked
    ("wait_empty"): for ever when a record waits for PostgreSQL, because such a record is
    rightly never acked. We wait for the outputs already in flight instead (a few ms
    normally), then commit what is acked; the rest is processed again by whoever owns the
    partition next.
    """

    f2pipe_holes: Holes | None = None  # set by serve(); read by SafeSeekConsumer._add_gap
    f2pipe_commits: Commits | None = None  # set by serve(); read by the consumer thread
    f2pipe_drain: Callable[[], Awaitable[None]] | None = None  # set by serve()

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        if self.f2pipe_drain is not None:
            await self.f2pipe_drain()
        await consumer.commit()

    def _new_transport(self) -> Any:
        # Faust's own aiokafka transport (the broker URLs are kafka://), with our consumer.
        return SafeSeekTransport(self.conf.broker_consumer, self)

    def _new_web(self) -> Web:
        # The port serves our pages only (/latest, /healthz, /metrics): none of Faust's
        # built-in views (/router, /table, "/", stats, /graph, /performance), which show the
        # cluster's URLs, table data and internal state. The web_*_enabled settings turn off
        # all but the "/" index, which Faust adds whenever its statistics are off.
        web = super()._new_web()
        web.blueprints = BlueprintManager()
        return web


def create_app(settings: Settings, partitions: int) -> ProcessorApp:
    """The Faust app for ``partitions`` raw partitions (the latest table gets as many)."""
    kafka, processor = settings.kafka, settings.processor
    never_auto_create_topics()
    return ProcessorApp(
        processor.processor_app_id,
        broker=[f"kafka://{hp.strip()}" for hp in kafka.kafka_bootstrap_servers.split(",")],
        broker_credentials=credentials(kafka),
        store="memory://",
        TableManager=PromptTableManager,
        datadir=processor.processor_data_dir
        or str(Path(tempfile.gettempdir()) / f"{processor.processor_app_id}-data"),
        web_enabled=True,
        # Only our pages (ProcessorApp._new_web): /latest asks the other workers itself
        # (LatestPeers), not through the /router views.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        web_bind=settings.observability.metrics_host,
        web_port=settings.port,
        canonical_url=advertised_url(settings.observability.metrics_host, settings.port),
        # Some brokers hold a group join for the whole rebalance timeout (Tansu:
        # docs/architecture.md).
        broker_rebalance_timeout=kafka.kafka_max_poll_interval_ms / 1000,
        broker_session_timeout=kafka.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, kafka.kafka_session_timeout_ms / 3000),
        broker_commit_interval=processor.processor_commit_interval_seconds,
        consumer_auto_offset_reset="earliest",
        topic_partitions=partitions,
        topic_replication_factor=kafka.kafka_replication_factor,
        topic_disable_leader=True,
        # A raw record holds up to ~500 messages (~70 kB): Faust's default buffer of 4096
        # events per stream would hold hundreds of MB.
        stream_buffer_maxsize=64,
        producer_acks=-1,
    )


class NoAutoCreateMetadataRequest(MetadataRequest):  # type: ignore[misc]
    """aiokafka's metadata request, never asking the broker to create the topics it names.

    aiokafka asks by default (MetadataRequest v4+), so after the broker lost its topics (a
    restart with memory storage) the consumer's next metadata refresh created the raw topic
    with the broker's own partition count (4 for Tansu) before TopicWatch could create it
    with the configured 6. Topics are created by f2pipe (ensure_topics, TopicWatch) and by
    Faust's declarations, with their counts, never by naming them.
    """

    def __init__(
        self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = None
    ) -> None:
        super().__init__(topics, allow_auto_topic_creation=False)


def never_auto_create_topics() -> None:
    """Every aiokafka client of this process (Faust's consumer, producer and admin) asks for
    metadata without auto-creation."""
    aiokafka.client.MetadataRequest = NoAutoCreateMetadataRequest


def leader_topic(app: faust.App) -> str:
    """Faust's leader-election topic (one partition), declared by Faust at start."""
    return cast(LeaderAssignor, app._leader_assignor)._leader_topic_name


def advertised_url(host: str, port: int) -> str:
    """Where the other workers ask this one for its part of /latest (LatestPeers): the
    address the web server listens on, or the host's name when it listens on all."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 (a comparison, not a bind)
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{port}"


def credentials(kafka: KafkaSettings) -> faust.auth.Credentials | None:
    """KAFKA_SECURITY_PROTOCOL and its SASL user for aiokafka, as client_config gives them
    to librdkafka (the broker's certificate and name verified against KAFKA_SSL_CA_FILE)."""
    protocol = kafka.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=kafka.kafka_ssl_ca_file)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    password = kafka.kafka_sasl_password
    return faust.SASLCredentials(
        username=kafka.kafka_sasl_username,
        password=password.get_secret_value() if password else None,
        ssl_context=context,
        mechanism=kafka.kafka_sasl_mechanism,
    )


# --- The last-value table ---------------------------------------------------------------------


class LatestFaustTable(faust.Table[str, Entry]):
    """Faust's table, except that a changelog record never replaces a newer value.

    A recovery replays the changelog over what the worker's memory already holds, and that
    memory may be newer: latest.py writes it directly and flushes it later, and a worker
    keeps the partitions it owned through a rebalance (measured: after one worker of two
    stopped, Faust's replay of the survivor's own partitions put back values from an older
    flush for ~150 devices). Each datapoint keeps its newest value, whatever the order.
    """

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        events = list(batch)
        store = self.data
        before = {}
        for event in events:
            key = self._to_key(event.key)
            if key not in before and (entry := store.get(key)) is not None:
                before[key] = entry
        super().apply_changelog_batch(events)
        for key, entry in before.items():
            replayed = store.get(key)
            if replayed is not None:
                store[key] = combine([replayed, entry])


def latest_table(app: faust.App, partitions: int) -> Any:
    # Not use_partitioner: latest.py writes each entry to the changelog partition of its raw
    # partition, so the worker owning that raw partition owns (and recovers) the entry.
    # app.Table with our class: app.tables.add(...) as app.Table does.
    return app.tables.add(
        LatestFaustTable(
            app,
            name=TABLE_NAME,
            default=None,
            beacon=app.tables.beacon,
            partitions=partitions,
            key_type=str,
            help="'<raw partition>:<device id>' -> {datapoint id: [timestamp_us, value, key]}",
            extra_topic_configs=CHANGELOG_CONFIG,
        )
    )


class FaustTableBackend:
    """latest.TableBackend over a Faust table: its store, and its changelog's encoding.

    latest.py writes the store directly (Faust's ``table[key] = value`` would send one
    changelog record per write) and produces the changelog itself; the records must be
    what Faust would write, or recovery would not read them.
    """

    def __init__(self, table: Any) -> None:
        self.table = table

    def store(self) -> MutableMapping[str, Entry]:
        return cast(MutableMapping[str, Entry], self.table.data)

    def changelog_topic(self) -> str:
        return cast(str, self.table.changelog_topic.get_topic_name())

    def changelog_key(self, key: str) -> bytes:
        table = self.table
        return cast(bytes, table.changelog_topic.prepare_key(key, table.key_serializer)[0])

    def changelog_value(self, entry: Entry) -> bytes:
        table = self.table
        return cast(bytes, table.changelog_topic.prepare_value(entry, table.value_serializer)[0])


PEER_TIMEOUT_SECONDS = 5.0  # for another worker's part of /latest


class LatestPeers:
    """Which worker owns which partitions of the latest table, and their parts of an entry.

    Every worker learns the whole distribution (worker URL -> its active changelog
    partitions) from the assignor at each rebalance. A worker answers for the partitions it
    owns only (latest.py: its memory also holds standby copies and revoked partitions), and
    not at all while a rebalance or its recovery is under way (its entries may be partial).
    """

    def __init__(self, app: faust.App, table: Any) -> None:
        self.app = app
        self.table = table

    def _topic(self) -> str:
        return cast(str, self.table.changelog_topic.get_topic_name())

    def local(self, device: int) -> Entry | None:
        """This worker's part; None while it cannot tell (rebalance, recovery)."""
        app = self.app
        if app.rebalancing or app.in_recovery:
            return None
        topic = self._topic()
        owned = [tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic]
        return lookup(self.table.data, device, owned)

    def others(self) -> list[str]:
        """The URLs of the other workers owning partitions of the table."""
        topic, me = self._topic(), str(self.app.conf.canonical_url)
        distribution = cast(PartitionAssignor, self.app.assignor).changelog_distribution
        return sorted(url for url, tps in distribution.items() if url != me and tps.get(topic))

    async def remote(self, url: str, device: int) -> Entry | None:
        """Another worker's part; None when it did not answer one."""
        try:
            async with asyncio.timeout(PEER_TIMEOUT_SECONDS):
                async with self.app.http_client.get(
                    f"{url}/latest/{device}", params={"scope": "local"}
                ) as response:
                    if response.status != 200:
                        return None
                    return cast(Entry, await response.json())
        # aiohttp's errors (not all OSErrors), a timeout, a body that is no JSON: all mean
        # no answer from that worker, hence a 503, never a partial one.
        except Exception as exc:
            log.warning("a worker did not answer for /latest",
                        extra={"url": url, "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
            return None

    def complete(self) -> bool:
        """Whether every partition of the table has an owner (not so before the first
        assignment, or while a worker that left is still listed: then one does not answer)."""
        topic = self._topic()
        distribution = cast(PartitionAssignor, self.app.assignor).changelog_distribution
        owned = {p for tps in distribution.values() for p in tps.get(topic, ())}
        return owned >= set(range(self.table.partitions))

    async def gather(self, device: int) -> Entry | None:
        """The device's newest values from every worker; None if one could not answer."""
        if not self.complete():
            return None
        parts = [self.local(device)]
        parts += await asyncio.gather(*(self.remote(url, device) for url in self.others()))
        if any(part is None for part in parts):
            return None
        return combine(part for part in parts if part is not None)


# --- The connectivity table ------------------------------------------------------------------


def connectivity_table(app: faust.App, partitions: int) -> Any:
    # Not use_partitioner: connectivity.py writes each controller's state to the changelog
    # partition of its raw partition, so the worker owning that raw partition recovers it.
    return app.Table(
        connectivity.TABLE_NAME,
        default=None,
        partitions=partitions,
        key_type=str,
        help="controller MAC -> [controller id, last_seen_us, online, changed_us, partition]",
        extra_topic_configs=connectivity.CHANGELOG_CONFIG,
    )


class FaustStateBackend:
    """connectivity.StateBackend over a Faust table (written as FaustTableBackend explains)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def store(self) -> MutableMapping[str, Any]:
        return cast(MutableMapping[str, Any], self.table.data)

    def changelog_topic(self) -> str:
        return cast(str, self.table.changelog_topic.get_topic_name())

    def changelog_key(self, key: str) -> bytes:
        table = self.table
        return cast(bytes, table.changelog_topic.prepare_key(key, table.key_serializer)[0])

    def changelog_value(self, state: connectivity.State) -> bytes:
        table = self.table
        return cast(bytes, table.changelog_topic.prepare_value(state, table.value_serializer)[0])


class FaustProgress:
    """connectivity.PartitionProgress from Faust's consumer: assignment, high watermark (the
    last one a fetch reported) and committed offset of each raw partition."""

    def __init__(self, app: faust.App, raw_topic: str) -> None:
        self.app = app
        self.raw_topic = raw_topic

    def owned(self) -> set[int]:
        consumer = self.app.consumer
        return {tp.partition for tp in consumer.assignment() if tp.topic == self.raw_topic}

    def highwater(self, partition: int) -> int | None:
        try:
            value = self.app.consumer.highwater(TP(self.raw_topic, partition))
        except (AssertionError, KeyError, IllegalStateError):  # not assigned (any more)
            return None
        return value if isinstance(value, int) else None

    def committed(self, partition: int) -> int | None:
        committed = cast(Any, self.app.consumer)._committed_offset
        value = committed.get(TP(self.raw_topic, partition))
        return value if isinstance(value, int) else None


# --- Wiring the service in ------------------------------------------------------------------


def serve(
    app: ProcessorApp,
    service: ProcessorService,
    *,
    table: Any,
    metrics: ProcessorMetrics,
    settings: Settings,
) -> None:
    """The agent, the latest-value timer, the registry listener and the web pages."""
    app.f2pipe_holes = service.holes
    app.f2pipe_commits = service.commits
    app.f2pipe_drain = service.drain
    raw_topic_name = settings.kafka.kafka_raw_topic
    raw_topic = app.topic(raw_topic_name, key_serializer="raw", value_serializer="raw")

    @app.agent(raw_topic, name="process")
    async def process(stream: Any) -> None:
        # noack: Faust would ack an event when the loop moves on, even when the body raised
        # or was cancelled; the service acks once the record's output is in Kafka.
        async for event in stream.noack().events():
            message = event.message
            ack = _acker(stream, event)
            await service.handle(message.partition, message.offset, event.value, ack)

    app.task(service.watch_registry)
    app.task(service.watch_redis)

    # Faust's timer decorator is untyped; the function keeps its signature.
    @app.timer(settings.processor.processor_latest_flush_seconds)  # type: ignore[untyped-decorator]
    async def flush_latest() -> None:
        await service.flush_latest()

    @app.timer(service.connectivity_interval)  # type: ignore[untyped-decorator]
    async def check_connectivity() -> None:
        await service.check_connectivity()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # The whole new assignment (Faust's eager rebalance), not only what is new to us.
        assigned: set[TP] = args[0] if args else kwargs.get("assigned", set())
        raw = [tp.partition for tp in assigned if tp.topic == raw_topic_name]
        metrics.assigned_partitions.set(len(raw))
        service.connectivity.assigned(raw)
        service.holes.assigned()

    @app.page("/healthz")
    async def healthz(self: View, request: Request) -> Response:
        ok, details = service.health()
        # Degraded (Redis down) is still 200: PostgreSQL answers every lookup.
        status = ("degraded" if "degraded" in details else "ok") if ok else "unhealthy"
        body = {"status": status, **details}
        return self.json(body, status=200 if ok else 503)

    peers = LatestPeers(app, table)

    @app.page("/latest/{device_id}")
    async def latest_values(self: View, request: Request, device_id: str) -> Response:
        if not device_id.isdigit():
            return self.json({"error": "device id must be an integer"}, status=400)
        device = int(device_id)
        if request.query.get("scope") == "local":  # another worker asks for our part
            part = peers.local(device)
            if part is None:
                return self.json({"error": "rebalancing"}, status=503)
            return self.json(part)
        stored = await peers.gather(device)
        if stored is None:
            return self.json(
                {"error": "a worker could not answer (rebalancing?): ask again"}, status=503
            )
        if not stored:
            return self.json({"error": f"no values for device {device_id} (yet)"}, status=404)
        return self.json(render(device, stored))

    # GET /metrics serves our registry, with Faust's sensor (f2pipe_processor_faust_*) in it.
    setup_prometheus_sensors(app, name_prefix="f2pipe_processor_faust", registry=metrics.registry)


def _acker(stream: Any, event: Any) -> Ack:
    async def ack() -> object:
        # Stream.ack does its bookkeeping before its first await: acks started in offset
        # order (acks.InFlight) take effect in offset order.
        return await stream.ack(event)

    return ack


# --- The worker -----------------------------------------------------------------------------


class Worker(faust.Worker):
    """Faust's worker with f2pipe's log lines instead of its colour logger and banner."""

    def __init__(self, app: faust.App, common: CommonSettings, **kwargs: Any) -> None:
        self._f2pipe_common = common
        super().__init__(app, quiet=True, redirect_stdouts=False, **kwargs)
        self.spinner = None  # a terminal spinner writes escape codes into log files

    def _setup_logging(self) -> None:
        common = self._f2pipe_common
        configure_logging("processor", common.log_level, common.log_format)
        # Faust and aiokafka explain every rebalance step at INFO: keep them to warnings.
        for noisy in ("faust", "mode", "aiokafka"):
            logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def run_worker(app: faust.App, common: CommonSettings) -> int:
    """Run the worker until SIGTERM/SIGINT; its exit status."""
    worker = Worker(app, common, loglevel=common.log_level)
    code = 0
    try:
        worker.execute_from_commandline()  # ends by raising SystemExit
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    return code


# --- What the adapter relies on, for the version check -------------------------------------


@dataclass(frozen=True)
class Hook:
    """Something of Faust's (or aiokafka's, mode's) the adapter overrides or relies on."""

    package: str  # the distribution it lives in (a key of PINNED)
    owner: type
    name: str
    why: str
    ours: type | None = None  # our subclass, when we override it

    @property
    def label(self) -> str:
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"

    def exists(self) -> bool:
        return hasattr(self.owner, self.name) or self.name in getattr(
            self.owner, "__annotations__", {}
        )


HOOKS: tuple[Hook, ...] = (
    Hook("faust-streaming", faust.App, "_consumer_wait_empty",
         "overridden: wait for outputs in flight (bounded) on rebalance and shutdown, not for "
         "every event to be acked, which never happens while a record waits for PostgreSQL",
         ProcessorApp),
    Hook("faust-streaming", faust.App, "_new_transport",
         "overridden: the transport that creates SafeSeekConsumer", ProcessorApp),
    Hook("faust-streaming", faust.App, "_new_web",
         "overridden: the web driver without Faust's built-in views (/router, /table, /)",
         ProcessorApp),
    Hook("faust-streaming", Web, "blueprints",
         "replaced: an empty BlueprintManager, so only our pages are routed"),
    Hook("faust-streaming", aiokafka_driver.Transport, "Consumer",
         "replaced: the consumer class the aiokafka transport instantiates", SafeSeekTransport),
    Hook("faust-streaming", aiokafka_driver.Consumer, "perform_seek",
         "overridden: keep resumed stream partitions paused during the seek (restart bug)",
         SafeSeekConsumer),
    Hook("faust-streaming", aiokafka_driver.AIOKafkaConsumerThread, "seek_to_beginning",
         "called: the seek aiokafka's seek_to_committed leaves out when nothing is committed"),
    Hook("faust-streaming", aiokafka_driver.Consumer, "resume_flow",
         "overridden: release the partitions held during the seek", SafeSeekConsumer),
    Hook("faust-streaming", aiokafka_driver.Consumer, "_add_gap",
         "overridden: a hole in the raw topic is read again, never marked processed unread "
         "(restart bug)", SafeSeekConsumer),
    Hook("faust-streaming", aiokafka_driver.Consumer, "getmany",
         "overridden: marks where each fetch starts, so a re-read seeks once the fetch with "
         "the hole is handed out", SafeSeekConsumer),
    Hook("faust-streaming", FaustConsumer, "_buffered_partitions",
         "changed: a partition waiting for its re-read leaves it (getmany hands those out "
         "even when they are not active)"),
    Hook("faust-streaming", aiokafka_driver.Consumer, "on_buffer_full",
         "overridden: a partition waiting for its re-read is not handed out while paused",
         SafeSeekConsumer),
    Hook("faust-streaming", aiokafka_driver.Consumer, "on_buffer_drop",
         "overridden: nor resumed before its seek", SafeSeekConsumer),
    Hook("faust-streaming", aiokafka_driver.Consumer, "seek",
         "called: seeks a partition back to its hole (and sets the offset read last)"),
    Hook("faust-streaming", FaustConsumer, "_read_offset",
         "set: the offset before the hole counts as read last, so the hole's first record "
         "is taken and a hole read again empty is reported again"),
    Hook("faust-streaming", aiokafka_driver.Consumer, "_get_active_partitions",
         "called: the partitions Faust has just resumed, to hold during the seek"),
    Hook("faust-streaming", aiokafka_driver.Consumer, "_is_changelog_tp",
         "called: changelog partitions are recovery's, never held"),
    Hook("faust-streaming", aiokafka_driver.Consumer, "pause_partitions",
         "called: holds the stream partitions during the seek"),
    Hook("faust-streaming", aiokafka_driver.Consumer, "resume_partitions",
         "called: releases them once flow control is back on"),
    Hook("faust-streaming", Stream, "noack",
         "relied on: the agent acks each event itself, once its output is in Kafka"),
    Hook("faust-streaming", Stream, "ack",
         "relied on: its bookkeeping happens before its first await, so acks started in "
         "offset order land in offset order (acks.InFlight)"),
    Hook("faust-streaming", faust.Table, "apply_changelog_batch",
         "overridden: a replayed changelog record never replaces a newer value",
         LatestFaustTable),
    Hook("faust-streaming", Collection, "_to_key",
         "called: a changelog record's key as the store holds it"),
    Hook("faust-streaming", Collection, "data",
         "relied on: latest.py writes the table's store directly, without Faust's per-key "
         "changelog send"),
    Hook("faust-streaming", FaustTopic, "prepare_key",
         "relied on: changelog keys serialised as Faust's table would (recovery reads them)"),
    Hook("faust-streaming", FaustTopic, "prepare_value",
         "relied on: changelog values serialised as Faust's table would"),
    Hook("faust-streaming", PartitionAssignor, "changelog_distribution",
         "read: every worker's URL and active changelog partitions, for /latest (LatestPeers)"),
    Hook("faust-streaming", PartitionAssignor, "assigned_actives",
         "called: the latest table's partitions this worker answers /latest for"),
    Hook("faust-streaming", PartitionAssignor, "_get_copartitioned_groups",
         "relied on: a table with the raw topic's partition count is co-partitioned with it, "
         "so the owner of raw partition P owns the changelog partitions P latest.py and "
         "connectivity.py write"),
    Hook("faust-streaming", faust.App, "rebalancing",
         "read: no /latest part is answered during a rebalance (entries may be partial)"),
    Hook("faust-streaming", faust.App, "in_recovery",
         "read: nor during a table recovery"),
    Hook("faust-streaming", faust.App, "http_client",
         "called: asks the other workers for their parts of /latest"),
    Hook("faust-streaming", faust.App, "on_partitions_assigned",
         "relied on: the signal tells connectivity.py which raw partitions are new to it"),
    Hook("faust-streaming", aiokafka_driver.AIOKafkaConsumerThread, "_fetch_records",
         "overridden: the live selection of partitions to drain, never read as 'all' when "
         "empty (restart bug)", ShortFetchConsumerThread),
    Hook("aiokafka", aiokafka.consumer.fetcher.Fetcher, "fetched_records",
         "relied on: drains only the partitions its selection contains, testing it with "
         "truth and `in` alone (LiveSelection)"),
    Hook("faust-streaming", aiokafka_driver.AIOKafkaConsumerThread, "_highwaters",
         "overridden: the ends table recovery reads the changelogs to, checked by a fetch "
         "(Tansu understates them)", ShortFetchConsumerThread),
    Hook("faust-streaming", aiokafka_driver.AIOKafkaConsumerThread, "_create_client_consumer",
         "called: a consumer outside the group, with the app's credentials, for that fetch"),
    Hook("faust-streaming", aiokafka_driver.Consumer, "highwater",
         "called: a raw partition's high watermark, to know when the worker caught up"),
    Hook("faust-streaming", FaustConsumer, "_committed_offset",
         "read: the committed offset of a raw partition nothing was processed of yet, and by "
         "perform_seek: a partition without one (None, or 0, which Faust stores as None) is "
         "sought to its beginning"),
    Hook("faust-streaming", faust.Worker, "spinner",
         "set to None: a terminal spinner writes escape codes into log files"),
    Hook("mode-streaming", faust.Worker, "_setup_logging",
         "overridden (mode.Worker's): f2pipe's log format instead of Faust's colour logger",
         Worker),
    Hook("aiokafka", aiokafka.client.AIOKafkaClient, "_metadata_update",
         "relied on: builds its request from aiokafka.client.MetadataRequest, which "
         "never_auto_create_topics replaces (no topic created by naming it)"),
    Hook("faust-streaming", faust.App, "_leader_assignor",
         "read: its leader topic, for TopicWatch to create again after the broker lost it"),
    Hook("faust-streaming", LeaderAssignor, "_leader_topic_name",
         "read: the leader topic's name"),
    Hook("faust-streaming", TableManager, "on_start",
         "overridden: the same steps without Faust's 1 s sleep before them", PromptTableManager),
    Hook("faust-streaming", TableManager, "_update_channels",
         "called: wires the declared tables' changelogs (all declared before the start)"),
    Hook("faust-streaming", aiokafka_driver.Consumer, "_new_consumer_thread",
         "overridden: the consumer thread that shortens the fetch wait", SafeSeekConsumer),
    Hook("faust-streaming", aiokafka_driver.AIOKafkaConsumerThread, "_commit",
         "overridden: a refused commit is counted (acks.Commits), not a crash of the worker",
         ShortFetchConsumerThread),
    Hook("faust-streaming", aiokafka_driver.AIOKafkaConsumerThread, "tp_last_committed_at",
         "updated: when each partition was last committed (Faust's livelock check reads it)"),
    Hook("faust-streaming", aiokafka_driver.AIOKafkaConsumerThread, "_create_worker_consumer",
         "overridden: sets the new consumer's _fetch_max_wait_ms (Faust passes 1,500 ms)",
         ShortFetchConsumerThread),
    Hook("aiokafka", aiokafka.AIOKafkaConsumer, "seek_to_committed",
         "relied on: awaited once per partition by Faust's perform_seek, the window in which "
         "the restart bug drops records; it seeks only partitions committed at an offset > 0"),
)  # fmt: skip
