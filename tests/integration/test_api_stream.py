"""`GET /v1/stream`, read as a client reads it: the api served by uvicorn on a free port, on
the real PostgreSQL (the api's own login) and a real Kafka, processed batches produced with
the pipeline's encoder, and the stream read with httpx + httpx-sse. The client that must not
read at all is a plain socket with a small receive buffer: a library would read for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgpack
import psycopg
import pytest
import uvicorn
from confluent_kafka import Producer
from fastapi import FastAPI
from httpx_sse import ServerSentEvent, connect_sse

from f2pipe.migrate import apply_migrations
from f2pipe_api.app import create_app
from f2pipe_api.hub import Hub
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.processed_feed import ProcessedFeed, iso
from f2pipe_api.store import PostgresStore
from f2pipe_api.tokens import Role, create_token
from f2pipe_devtools.servers import KafkaBroker, PostgresServer, free_port
from f2pipe_devtools.servers.proxy import TcpProxy
from f2pipe_shared.kafka import client_config, ensure_topics
from f2pipe_shared.records import Event, ProcessedBatch, Reading, encode_processed_batch
from f2pipe_shared.settings import KafkaSettings
from tests.integration.apikit import api_conninfo

# Not `database`: nothing here depends on the storage engine, so the plain-PostgreSQL pass
# (make test) does not run it again.
pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
MAC_A = "aabbccddee0a"
MAC_B = "aabbccddee0b"
BUFFER = 100
MAX_CLIENTS = 4
HEARTBEAT = 0.5
T0 = 1_795_000_000_000_000


@dataclass
class Served:
    url: str
    tokens: dict[Role, str]
    hub: Hub
    metrics: ApiMetrics
    producer: Producer
    topic: str
    devices: dict[str, int]
    loop: asyncio.AbstractEventLoop
    app: FastAPI

    def auth(self, role: Role = Role.viewer) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def produce(self, batch: ProcessedBatch | bytes) -> None:
        value = batch if isinstance(batch, bytes) else encode_processed_batch(batch)
        self.producer.produce(self.topic, value)
        self.producer.flush(10)


@dataclass
class Reader:
    """One httpx-sse client in a thread: every event it gets, in order."""

    served: Served
    params: list[tuple[str, str]] = field(default_factory=list)
    events: queue.Queue[ServerSentEvent] = field(default_factory=queue.Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    connected: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    client: httpx.Client | None = None
    sock: socket.socket | None = None

    def __enter__(self) -> Reader:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.connected.wait(10), "the stream did not open"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.thread is not None
        assert self.client is not None
        # shutdown() wakes the reading thread's recv and sends the server a FIN at once;
        # close() alone does neither while that recv holds the socket (seen once in CI: the
        # thread outlived its test by 10 s, and the api kept the client subscribed).
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        self.client.close()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def _run(self) -> None:
        self.client = httpx.Client(base_url=self.served.url, timeout=30)
        try:
            with connect_sse(
                self.client, "GET", "/v1/stream", params=self.params, headers=self.served.auth()
            ) as source:
                assert source.response.status_code == 200, source.response.read()
                self.sock = source.response.extensions["network_stream"].get_extra_info("socket")
                self.connected.set()
                for event in source.iter_sse():
                    self.events.put(event)
        except (httpx.HTTPError, OSError, RuntimeError):
            if not self.stop.is_set():
                raise

    def take(self, n: int, timeout: float = 15) -> list[ServerSentEvent]:
        deadline = time.monotonic() + timeout
        return [self.events.get(timeout=max(deadline - time.monotonic(), 0.01)) for _ in range(n)]

    def nothing_more(self, wait: float = 1.0) -> bool:
        try:
            self.events.get(timeout=wait)
        except queue.Empty:
            return True
        return False


@pytest.fixture(scope="module")
def served(postgres_server: PostgresServer, kafka_bootstrap: str) -> Iterator[Served]:
    database = postgres_server.create_database(f"api_stream_{os.getpid()}")
    apply_migrations(database)
    tokens = {role: create_token(database, f"stream-{role.value}", role)[0] for role in Role}
    kafka = KafkaSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_processed_topic=f"processed-stream-{uuid.uuid4().hex[:8]}",
    )
    ensure_topics(kafka, {kafka.kafka_processed_topic: 2})
    metrics = ApiMetrics()
    hub = Hub(metrics, buffer=BUFFER, max_clients=MAX_CLIENTS, heartbeat=HEARTBEAT)
    db = PostgresStore(api_conninfo(database))
    feed = ProcessedFeed(kafka, hub, db)
    app = create_app(db=db, metrics=metrics, stream=feed)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_config=None))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and feed.ready.is_set()):
        assert thread.is_alive(), "the api stopped while starting"
        assert time.monotonic() < deadline, "the api or its feed did not start within 30 s"
        time.sleep(0.05)
    url = f"http://{HOST}:{port}"
    for mac in (MAC_A, MAC_B):
        r = httpx.post(
            f"{url}/v1/controllers",
            json={"mac": mac, "name": f"controller {mac[-1]}"},
            headers={"Authorization": f"Bearer {tokens[Role.operator]}"},
        )
        assert r.status_code == 201, r.text
    with psycopg.connect(database) as conn:
        devices: dict[str, int] = dict(
            conn.execute("SELECT mac, id FROM registry.devices WHERE mac IS NOT NULL")
        )
    loop = feed._loop
    assert loop is not None
    producer = Producer(client_config(kafka) | {"linger.ms": 0})
    try:
        yield Served(
            url, tokens, hub, metrics, producer, kafka.kafka_processed_topic, devices, loop, app
        )
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive(), "the api did not stop"
        assert feed._thread is None, "the feed did not stop"


@pytest.fixture(autouse=True)
def no_client_left(served: Served) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 10
    while served.hub.subscribers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not served.hub.subscribers, "a stream client outlived its test"


def value(served: Served, name: str) -> float:
    v = served.metrics.registry.get_sample_value(name)
    return 0.0 if v is None else v


def test_all_and_one_controller_subscriptions_get_their_readings_and_events(
    served: Served,
) -> None:
    a, b = served.devices[MAC_A], served.devices[MAC_B]
    batch = ProcessedBatch(
        0,
        1,
        [Reading(T0, a, 7, 21.5), Reading(T0 + 1, b, 7, -3.0)],
        [
            Event(T0 + 2, a, "door", {"open": True}),
            Event(T0 + 3, b, "connectivity", {"status": "offline"}),
        ],
    )
    # aa:bb:… is the same controller as aabb…: the filter compares normalized MACs.
    colons = ":".join(MAC_A[i : i + 2] for i in range(0, 12, 2))
    with Reader(served) as everyone, Reader(served, [("mac", colons)]) as only_a:
        served.produce(batch)
        got = everyone.take(4)
        mine = only_a.take(2)
        assert only_a.nothing_more()
    assert [e.event for e in got] == ["reading", "reading", "event", "connectivity"]
    first = got[0].json()
    assert first == {
        "mac": MAC_A,
        "device_id": a,
        "device": "controller a",
        "datapoint_id": 7,
        "datapoint": None,
        "timestamp": iso(T0),
        "value": 21.5,
    }
    assert first["timestamp"].startswith("2026-")
    assert got[3].json()["mac"] == MAC_B
    assert got[3].json()["data"] == {"status": "offline"}
    assert [(e.event, e.json()["mac"]) for e in mine] == [("reading", MAC_A), ("event", MAC_A)]
    assert mine[1].json()["data"] == {"open": True}


def test_a_bad_record_is_skipped_and_the_feed_goes_on(served: Served) -> None:
    skipped = value(served, "api_stream_skipped_records_total")
    b = served.devices[MAC_B]
    with Reader(served) as reader:
        served.produce(b"\x93not a batch")
        # The processed framing, but a value that is not a number.
        served.produce(msgpack.packb([1, 0, 1, [[T0, b, 1, "x"]], []]))
        served.produce(
            ProcessedBatch(0, 2, [Reading(T0, b, 1, 5.0), Reading(T0, b, 1, float("nan"))], [])
        )
        first, nan = reader.take(2)
    assert first.json()["value"] == 5.0
    assert nan.json()["value"] is None  # JSON has no NaN: a browser could not parse it
    assert value(served, "api_stream_skipped_records_total") == skipped + 2


def test_commands_published_by_the_api_reach_their_controller_s_subscribers(
    served: Served,
) -> None:
    with Reader(served, [("mac", MAC_B)]) as only_b, Reader(served) as everyone:
        for mac in (MAC_A, MAC_B):
            served.loop.call_soon_threadsafe(
                served.hub.publish, "command", mac, {"id": 9, "status": "confirmed"}
            )
        (b,) = only_b.take(1)
        assert [e.json()["mac"] for e in everyone.take(2)] == [MAC_A, MAC_B]
    assert b.event == "command"
    assert b.json() == {"mac": MAC_B, "id": 9, "status": "confirmed"}


def test_a_token_is_needed_and_never_lands_in_the_access_log(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    with httpx.Client(base_url=served.url, timeout=10) as client:
        r = client.get("/v1/stream")
        assert r.status_code == 401
        assert r.json()["reason"] == "missing_token"
        r = client.get("/v1/stream", headers={"Authorization": "Bearer f2api_nope"})
        assert r.status_code == 401
        assert r.json()["reason"] == "wrong_token"
        with client.stream("GET", "/v1/stream", headers=served.auth()) as ok:
            assert ok.status_code == 200
            assert ok.headers["content-type"].startswith("text/event-stream")
            assert ok.headers["cache-control"] == "no-store"
            # An idle stream says it is alive every API_STREAM_HEARTBEAT seconds.
            seen = b""
            for chunk in ok.iter_raw():
                seen += chunk
                if b": heartbeat" in seen:
                    break
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/v1/stream" in line for line in lines), lines
    for token in served.tokens.values():
        assert all(token not in line for line in lines)


def test_more_clients_than_allowed_get_a_503(served: Served) -> None:
    readers = [Reader(served) for _ in range(MAX_CLIENTS)]
    for reader in readers:
        reader.__enter__()
    try:
        r = httpx.get(f"{served.url}/v1/stream", headers=served.auth(), timeout=10)
        assert r.status_code == 503
        assert r.json()["reason"] == "stream_unavailable"
        assert r.headers["retry-after"] == "10"
        assert value(served, "api_stream_clients") == MAX_CLIENTS
    finally:
        for reader in readers:
            reader.__exit__()


def test_too_many_macs_and_a_bad_mac_are_refused(served: Served) -> None:
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("mac", f"aabbccdd{i:04x}") for i in range(101)
    ]
    r = httpx.get(f"{served.url}/v1/stream", params=params, headers=served.auth(), timeout=10)
    assert r.status_code == 422
    r = httpx.get(
        f"{served.url}/v1/stream", params={"mac": "nope"}, headers=served.auth(), timeout=10
    )
    assert r.status_code == 422


def _stalled_client(served: Served) -> socket.socket:
    """A client that asks for the stream and then reads nothing (a 4 KiB receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = served.url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    token = served.tokens[Role.viewer]
    sock.sendall(
        f"GET /v1/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


def test_a_client_that_does_not_read_is_dropped_and_a_fast_one_keeps_everything(
    served: Served,
) -> None:
    overflows = value(served, "api_stream_overflows_total")
    device = served.devices[MAC_A]
    blob = "x" * 10_000  # 10 KB an event: the stalled client's socket buffers fill fast
    with Reader(served) as fast:
        stalled = _stalled_client(served)
        deadline = time.monotonic() + 5
        while len(served.hub.subscribers) < 2:
            assert time.monotonic() < deadline, "the stalled client was never subscribed"
            time.sleep(0.02)
        produced = got = 0
        deadline = time.monotonic() + 60
        while value(served, "api_stream_overflows_total") == overflows:
            assert time.monotonic() < deadline, "the stalled client never overflowed"
            events = [Event(T0 + produced + i, device, "blob", {"b": blob}) for i in range(10)]
            served.produce(ProcessedBatch(0, produced, [], events))
            produced += 10
            # the fast client reads as it goes: it never falls a buffer behind, misses nothing
            for e in fast.take(10):
                assert e.json()["timestamp"] == iso(T0 + got)
                got += 1
        assert value(served, "api_stream_overflows_total") == overflows + 1
        assert len(served.hub.subscribers) == 1  # the fast client, still subscribed
        # After the overflow the fast client goes on receiving.
        served.produce(ProcessedBatch(0, produced, [Reading(T0, device, 1, 42.0)], []))
        (last,) = fast.take(1)
        assert last.json()["value"] == 42.0
        # The stalled client reads now: what its buffers held, `event: overflow`, the end.
        stalled.settimeout(15)
        received = b""
        while chunk := stalled.recv(1 << 16):
            received += chunk
        stalled.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert b"event: overflow" in received[-500:]
    assert received.count(b"event: event") < produced  # it missed some: it was cut off


def test_the_feed_waits_for_kafka_and_comes_back_after_an_outage(
    migrated: str, servers_dir: Path
) -> None:
    """Kafka away at start-up, then cut while streaming (a proxy in front of a broker of
    its own that advertises the proxy): the feed waits, assigns, and delivers again."""
    proxy_port = free_port()
    kafka = KafkaBroker(Path(tempfile.mkdtemp(dir=servers_dir)), advertised_port=proxy_port)
    kafka.start()
    proxy = TcpProxy(kafka.port, port=proxy_port).start()
    settings = KafkaSettings(
        kafka_bootstrap_servers=f"127.0.0.1:{proxy_port}", kafka_processed_topic="processed-out"
    )
    try:
        ensure_topics(settings, {settings.kafka_processed_topic: 1})
        producer = Producer(client_config(settings) | {"linger.ms": 0})
        proxy.cut()
        asyncio.run(_outage(migrated, settings, proxy, producer))
    finally:
        proxy.stop()
        kafka.stop()


async def _outage(
    migrated: str, settings: KafkaSettings, proxy: TcpProxy, producer: Producer
) -> None:
    db = PostgresStore(api_conninfo(migrated))
    await db.open()
    hub = Hub(ApiMetrics(), buffer=BUFFER, max_clients=1)
    sub = hub.subscribe(None)
    assert sub is not None
    feed = ProcessedFeed(settings, hub, db)
    await feed.start()
    try:
        await asyncio.sleep(7)  # longer than one attempt to assign (5 s): it is retried
        assert not feed.ready.is_set()  # no Kafka: nothing assigned, the api still serves
        proxy.restore()
        await _until(feed.ready.is_set, 30)
        for n in (1, 2):
            producer.produce(
                settings.kafka_processed_topic,
                encode_processed_batch(ProcessedBatch(0, n, [Reading(T0, 1, 1, float(n))], [])),
            )
            await asyncio.to_thread(producer.flush, 30)
            await _until(lambda n=n: sub.count == n, 30)  # type: ignore[misc]
            proxy.cut()  # the second reading crosses an outage of the running feed
            await asyncio.sleep(3)
            proxy.restore()
        assert b'"value":2.0' in b"".join(sub.pending)
    finally:
        await feed.stop()
        await db.close()


async def _until(check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.1)
