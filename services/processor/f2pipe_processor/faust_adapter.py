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
- ``FaustTableBackend`` and ``latest_table``: the last-value table's storage and changelog
  encoding for latest.py;
- ``connectivity_table``, ``FaustStateBackend`` and ``FaustProgress``: the controllers'
  connectivity state, its changelog, and where the consumer stands (connectivity.py);
- ``run_worker``: Faust's worker with f2pipe's logging, until SIGTERM/SIGINT.

The restart bug (faust-streaming 0.15.3, reproduced by the kill -9 test): when a worker gets
its partitions, Faust's recovery resumes the stream partitions *before* it seeks them to the
committed offsets (``Recovery.on_recovery_completed``), and aiokafka's ``seek_to_committed``
awaits one offset fetch per partition. Records fetched in that window are dropped by Faust
(flow control is still off), aiokafka's position has moved past them, so the next record
arrives with a hole before it, and Faust's gap handling (``Consumer._add_gap``, meant for
compacted topics and transaction markers) marks the hole as processed. The next commit then
skips those records for good: lost readings. Two defences, both narrow:

- the stream partitions stay paused from the seek until flow control is back on, so no
  record can be fetched and dropped in between (``perform_seek`` / ``resume_flow``);
- a hole in a topic that cannot have one (the raw topic) is never acked: ``_add_gap`` hands
  it to ``acks.Holes``, which logs, counts and reports it; no commit passes it, and a
  restart processes it again;
- a partition nothing was committed of yet is sought to its beginning: aiokafka's
  ``seek_to_committed`` leaves it where the dropped records left it, and Faust, having no
  committed offset to compare with, sees no hole (a rebalance before a new group's first
  commit lost every record fetched before it: a CI failure of the kill -9 test).
"""

from __future__ import annotations

import logging
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiokafka  # type: ignore[import-untyped]
import faust
from aiokafka.errors import IllegalStateError  # type: ignore[import-untyped]
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import Stream
from faust.tables.base import Collection
from faust.topics import Topic as FaustTopic
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from faust.web import Request, Response, View
from faust.web.base import BlueprintManager, Web

from f2pipe_processor import connectivity
from f2pipe_processor.acks import Ack, Holes
from f2pipe_processor.latest import CHANGELOG_CONFIG, TABLE_NAME, Entry, render
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.service import ProcessorService
from f2pipe_processor.settings import Settings
from f2pipe_shared.logs import configure_logging
from f2pipe_shared.settings import CommonSettings, KafkaSettings

# The versions every hook below was read against (uv.lock).
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}


# --- The consumer -----------------------------------------------------------------------------


class SafeSeekConsumer(aiokafka_driver.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: set[TP] = set()

    async def perform_seek(self) -> None:
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
        holes: Holes | None = getattr(self.app, "f2pipe_holes", None)
        if holes is None or not holes.guards(tp.topic):
            await super()._add_gap(tp, offset_from, offset_to)
            return
        # Never ack what was not processed: commits stop before the hole, and a restart
        # processes it again (duplicates, which the sink ignores, instead of losses).
        holes.skipped(tp.topic, tp.partition, offset_from, offset_to)


class SafeSeekTransport(aiokafka_driver.Transport):
    Consumer = SafeSeekConsumer


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
    return ProcessorApp(
        processor.processor_app_id,
        broker=[f"kafka://{hp.strip()}" for hp in kafka.kafka_bootstrap_servers.split(",")],
        broker_credentials=credentials(kafka),
        store="memory://",
        datadir=processor.processor_data_dir
        or str(Path(tempfile.gettempdir()) / f"{processor.processor_app_id}-data"),
        web_enabled=True,
        # Only our pages (ProcessorApp._new_web); table_route forwards /latest through
        # app.router in-process, not through the /router views.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        web_bind=settings.observability.metrics_host,
        web_port=settings.port,
        canonical_url=f"http://{socket.gethostname()}:{settings.port}",
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


def latest_table(app: faust.App, partitions: int) -> Any:
    return app.Table(
        TABLE_NAME,
        default=None,
        partitions=partitions,
        key_type=str,
        use_partitioner=True,
        help="device id -> {datapoint id: [timestamp_us, value, key]}",
        extra_topic_configs=CHANGELOG_CONFIG,
    )


class FaustTableBackend:
    """latest.TableBackend over a Faust table: its store, and its changelog's encoding.

    latest.py writes the store directly (Faust's ``table[key] = value`` would send one
    changelog record per write) and produces the changelog itself; the records must be
    what Faust would write, or recovery and ``table_route`` would disagree with them.
    """

    def __init__(self, app: faust.App, table: Any) -> None:
        self.app = app
        self.table = table

    def store(self) -> MutableMapping[str, Entry]:
        return cast(MutableMapping[str, Entry], self.table.data)

    def changelog_topic(self) -> str:
        return cast(str, self.table.changelog_topic.get_topic_name())

    def changelog_key(self, key: str) -> tuple[bytes, int]:
        table = self.table
        key_bytes = cast(bytes, table.changelog_topic.prepare_key(key, table.key_serializer)[0])
        # Faust's partitioner, as table_route uses it to find the key's worker.
        tp = self.app.producer.key_partition(self.changelog_topic(), key_bytes)
        return key_bytes, tp.partition

    def changelog_value(self, entry: Entry) -> bytes:
        table = self.table
        return cast(bytes, table.changelog_topic.prepare_value(entry, table.value_serializer)[0])


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

    # Faust's timer decorator is untyped; the function keeps its signature.
    @app.timer(settings.processor.processor_latest_flush_seconds)  # type: ignore[untyped-decorator]
    async def flush_latest() -> None:
        await service.flush_latest()

    @app.timer(service.connectivity_interval)  # type: ignore[untyped-decorator]
    async def check_connectivity() -> None:
        await service.check_connectivity()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned: set[TP] = args[0] if args else kwargs.get("assigned", set())
        service.connectivity.assigned(tp.partition for tp in assigned if tp.topic == raw_topic_name)

    @app.page("/healthz")
    async def healthz(self: View, request: Request) -> Response:
        ok, details = service.health()
        body = {"status": "ok" if ok else "unhealthy", **details}
        return self.json(body, status=200 if ok else 503)

    @app.page("/latest/{device_id}")
    @app.table_route(table=table, match_info="device_id")
    async def latest_values(self: View, request: Request, device_id: str) -> Response:
        if not device_id.isdigit():
            return self.json({"error": "device id must be an integer"}, status=400)
        stored = table.get(str(int(device_id)))
        if not stored:
            return self.json({"error": f"no values for device {device_id} (yet)"}, status=404)
        return self.json(render(int(device_id), stored))

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
         "overridden: a hole in the raw topic is never marked processed (restart bug)",
         SafeSeekConsumer),
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
    Hook("faust-streaming", Collection, "data",
         "relied on: latest.py writes the table's store directly, without Faust's per-key "
         "changelog send"),
    Hook("faust-streaming", FaustTopic, "prepare_key",
         "relied on: changelog keys serialised as Faust's table would (recovery reads them)"),
    Hook("faust-streaming", FaustTopic, "prepare_value",
         "relied on: changelog values serialised as Faust's table would"),
    Hook("faust-streaming", aiokafka_driver.Producer, "key_partition",
         "relied on: Faust's partitioner for the changelog, so table_route finds each key"),
    Hook("faust-streaming", faust.App, "on_partitions_assigned",
         "relied on: the signal tells connectivity.py which raw partitions are new to it"),
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
    Hook("aiokafka", aiokafka.AIOKafkaConsumer, "seek_to_committed",
         "relied on: awaited once per partition by Faust's perform_seek, the window in which "
         "the restart bug drops records; it seeks only partitions committed at an offset > 0"),
)  # fmt: skip
