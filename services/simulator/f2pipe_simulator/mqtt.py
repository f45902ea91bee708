"""Many MQTT connections on one asyncio loop: paho's external-loop API, no thread per client.

Each simulated controller has its own paho client, certificate and TCP connection (the
broker's ACL lets an identity publish only its own topics). paho does the MQTT; the asyncio
event loop does the I/O: each socket is registered for reading with the loop, whose callback
calls ``loop_read``; paho writes at once when it can and the loop watches a socket for
writability only while paho has packets queued; one ticker calls ``loop_misc`` (keepalive)
for every client once a second.

paho's ``reconnect()`` would connect and run the TLS handshake blocking, which with a
thousand clients stalls the loop for seconds. So the socket is connected and its handshake
done here, asynchronously (``open_socket``), and handed to paho through ``DeviceClient``,
whose ``_create_socket`` (the hook ``reconnect()`` calls) returns it. The rest of paho runs
unchanged; tests pin this behaviour for the paho version in use.

Reconnection: exponential backoff with jitter (``Backoff``), for the first connection and
after every loss; at most ``gate`` handshakes run at once, so a broker restart is followed by
a paced reconnection of the whole fleet rather than a thundering herd.

``PahoBroker`` (the `ports.Broker` of production) opens each controller's ``Connection`` with
what they all share: the broker's address, the handshake gate, the backoff, the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from f2pipe_simulator.messages import Message
from f2pipe_simulator.metrics import SimulatorMetrics
from f2pipe_simulator.ports import AckHandler, CommandHandler

log = logging.getLogger(__name__)


class ConnectFailure(Exception):
    """A connection attempt failed; ``kind`` is the metric label."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt ``n`` (1 = the first retry): ``initial * 2**(n-1)``, capped at
    ``maximum``, then a random point in its upper half ("equal jitter": never 0, spread)."""

    initial: float = 0.5
    maximum: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** min(max(attempt - 1, 0), 30))
        return (rng or _jitter).uniform(ceiling / 2, ceiling)


_jitter = random.Random()


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    keepalive: int = 30
    timeout: float = 10.0


class DeviceClient(mqtt.Client):
    """A paho client that uses the socket it is given instead of connecting by itself."""

    def __init__(self, client_id: str) -> None:
        super().__init__(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        self.prepared: socket.socket | None = None

    def _create_socket(self) -> socket.socket:  # paho's hook, called by reconnect()
        sock, self.prepared = self.prepared, None
        if sock is None:
            raise ConnectionError("no prepared socket: the simulator connects sockets itself")
        return sock

    def force_close(self) -> None:
        """Drop the socket without MQTT niceties (a peer that stopped answering)."""
        self._sock_close()


async def open_socket(broker: BrokerAddress, context: ssl.SSLContext | None) -> socket.socket:
    """A connected socket to the broker, TLS handshake done, without blocking the loop."""
    loop = asyncio.get_running_loop()
    sock = await _connect_tcp(loop, broker)
    if context is None:
        return sock
    tls = context.wrap_socket(sock, server_hostname=broker.host, do_handshake_on_connect=False)
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                await _ready(loop, tls, write=False)
            except ssl.SSLWantWriteError:
                await _ready(loop, tls, write=True)
    except BaseException:
        tls.close()
        raise


async def _connect_tcp(loop: asyncio.AbstractEventLoop, broker: BrokerAddress) -> socket.socket:
    last: OSError | None = None
    for family, kind, proto, _, address in await _addresses(loop, broker):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last or OSError(f"{broker.host}: no address")


_RESOLVED: dict[tuple[str, int], list[Any]] = {}


async def _addresses(loop: asyncio.AbstractEventLoop, broker: BrokerAddress) -> list[Any]:
    key = (broker.host, broker.port)
    try:
        ip = ipaddress.ip_address(broker.host)
    except ValueError:
        # Resolved once per run and again after a failure: a thousand lookups on every
        # broker restart would be a thousand trips through the resolver's thread pool.
        if key not in _RESOLVED:
            _RESOLVED[key] = list(
                await loop.getaddrinfo(broker.host, broker.port, type=socket.SOCK_STREAM)
            )
        return _RESOLVED[key]
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return [(family, socket.SOCK_STREAM, 0, "", (broker.host, broker.port))]


async def _ready(loop: asyncio.AbstractEventLoop, sock: socket.socket, *, write: bool) -> None:
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    fd = sock.fileno()
    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await waiter
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


@dataclass(eq=False)
class PahoBroker:
    """Opens controllers' connections to one broker (`ports.Broker`).

    ``contexts`` gives a controller's TLS context by CN; None: plain MQTT.
    """

    address: BrokerAddress
    _: KW_ONLY
    contexts: Callable[[str], ssl.SSLContext] | None
    connect_concurrency: int
    backoff: Backoff
    queue_size: int
    metrics: SimulatorMetrics
    _gate: asyncio.Semaphore | None = field(default=None, init=False, repr=False)

    def connection(self, cn: str, *, on_command: CommandHandler, on_ack: AckHandler) -> Connection:
        """A connection for controller ``cn``, made on the running loop; its ``run`` connects."""
        if self._gate is None:  # one gate for every connection: handshakes in flight at once
            self._gate = asyncio.Semaphore(self.connect_concurrency)
        return Connection(
            cn,
            self.address,
            None if self.contexts is None else self.contexts(cn),
            gate=self._gate,
            backoff=self.backoff,
            queue_size=self.queue_size,
            on_command=on_command,
            on_ack=on_ack,
            metrics=self.metrics,
        )


@dataclass(eq=False)
class Connection:
    """One controller's MQTT connection: connect, stay connected, publish, take commands."""

    cn: str
    broker: BrokerAddress
    context: ssl.SSLContext | None
    _: KW_ONLY
    gate: asyncio.Semaphore
    backoff: Backoff
    queue_size: InitVar[int]
    on_command: CommandHandler
    on_ack: AckHandler
    metrics: SimulatorMetrics
    inflight: InitVar[int] = 100
    connected: bool = field(default=False, init=False)
    last_error: str | None = field(default=None, init=False)  # the last failure's kind
    pending: dict[int, Message] = field(default_factory=dict, init=False)

    def __post_init__(self, queue_size: int, inflight: int) -> None:
        cn, context, broker = self.cn, self.context, self.broker
        self.ever_connected = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = None
        self._writing = False  # the loop watches the socket for writability
        self._connack: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()  # a lost connection, or stop()
        self._closed = asyncio.Event()  # the connection is gone
        self._stopping = False
        client = self.client = DeviceClient(cn)
        if context is None:
            client.username_pw_set(cn)  # a plain test broker has no certificate to name us
        client.max_queued_messages_set(queue_size)
        client.max_inflight_messages_set(inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        # No register-write callbacks: paho then writes at once (in publish(), PINGREQ, ...)
        # and the loop watches for writability only while paho has something queued
        # (_sync_writer). Registering and unregistering the socket for every message cost a
        # fifth of the CPU time with a thousand connections.
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.connect_async(broker.host, broker.port, broker.keepalive, clean_start=True)

    # --- publishing ------------------------------------------------------------------------

    def publish(self, message: Message) -> bool:
        """Hand a QoS 1 message to paho; False if this controller's queue is full.

        Messages taken while disconnected wait in paho's queue and go out after the next
        CONNACK, as do those in flight when the connection dropped.
        """
        info = self.client.publish(message.topic, message.payload, qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            return False
        self.pending[info.mid] = message
        self.metrics.outstanding.inc()
        self._sync_writer()
        return True

    # --- the connection's life -------------------------------------------------------------

    async def run(self) -> None:
        """Connect, and reconnect after every loss, until stop()."""
        attempt = 0
        while not self.stopping():
            if attempt:
                self._wake.clear()  # a loss during the failed attempt must not skip the wait
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.backoff.delay(attempt))
                if self.stopping():
                    break
            self._wake.clear()
            try:
                async with self.gate:
                    if self.stopping():
                        break
                    await self._connect()
            except ConnectFailure as exc:
                self.metrics.connects.labels(exc.kind).inc()
                self.last_error = exc.kind
                log.debug("connection attempt failed", extra={"cn": self.cn, "error": str(exc)})
                attempt += 1
                continue
            self.metrics.connects.labels("ok").inc()
            attempt = 1  # after a loss, the first retry waits a little too: jitter spreads them
            await self._wake.wait()
            if not self.stopping():
                self.metrics.disconnects.inc()

    async def _connect(self) -> None:
        timeout = self.broker.timeout
        try:
            sock = await asyncio.wait_for(open_socket(self.broker, self.context), timeout)
        except ssl.SSLError as exc:
            raise ConnectFailure("tls", exc.reason or str(exc)) from None
        except TimeoutError:
            raise ConnectFailure("timeout", "connect and TLS handshake") from None
        except OSError as exc:
            raise ConnectFailure("network", exc.strerror or str(exc)) from None
        self._connack = self._loop.create_future()
        self.client.prepared = sock
        try:
            self.client.reconnect()
        except OSError as exc:
            sock.close()
            raise ConnectFailure("network", str(exc)) from None
        self._sync_writer()
        try:
            await asyncio.wait_for(self._connack, timeout)
        except TimeoutError:
            self.client.force_close()
            raise ConnectFailure("timeout", "no CONNACK") from None
        finally:
            self._connack = None

    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Stop reconnecting (the running ``run`` returns); see ``disconnect``."""
        self._stopping = True
        self._wake.set()

    async def disconnect(self, grace: float = 2.0) -> None:
        """Send DISCONNECT and wait for it to go out; drop the socket if it does not."""
        self.stop()
        if self.connected:
            self._closed.clear()
            self.client.disconnect()
            self._sync_writer()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), grace)
        if self._fd is not None:
            self.client.force_close()
        self.client.disconnect()  # marks paho disconnected if the socket is already gone

    def misc(self) -> None:
        """Keepalive: PINGREQ when due, drop a connection whose PINGRESP never came."""
        if self._fd is not None:
            self.client.loop_misc()
            self._sync_writer()

    @property
    def outstanding(self) -> int:
        return len(self.pending)

    # --- paho callbacks ----------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        waiter = self._connack
        if reason.is_failure:
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectFailure("refused", str(reason)))
            return
        client.subscribe(f"cmnd/{self.cn}/#", qos=1)
        self.connected = True
        self.last_error = None
        self.ever_connected.set()
        self.metrics.connected.inc()
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        waiter = self._connack
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectFailure("closed", f"before CONNACK: {reason}"))
        self._closed.set()
        if self.connected:
            self.connected = False
            self.metrics.connected.dec()
            if not self._stopping:
                log.debug("connection lost", extra={"cn": self.cn, "reason": str(reason)})
        self._wake.set()

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        message = self.pending.pop(mid, None)
        if message is None:
            return
        self.metrics.outstanding.dec()
        self.on_ack(message, not reason.is_failure)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.on_command(self.cn, msg.topic, bytes(msg.payload))

    # --- sockets on the asyncio loop ---------------------------------------------------------

    def _on_socket_open(self, _client: mqtt.Client, _userdata: object, sock: Any) -> None:
        self._fd = sock.fileno()
        self._writing = False
        self._loop.add_reader(sock.fileno(), self._readable)

    def _on_socket_close(self, _client: mqtt.Client, _userdata: object, _sock: Any) -> None:
        # Called before paho closes the socket, so the descriptor is still ours to remove.
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
            self._fd = None
            self._writing = False

    def _sync_writer(self) -> None:
        """Watch for writability exactly while paho has packets it could not write yet."""
        if self._fd is None:
            return
        wanted = self.client.want_write()
        if wanted and not self._writing:
            self._loop.add_writer(self._fd, self._writable)
            self._writing = True
        elif not wanted and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _readable(self) -> None:
        client = self.client
        rc = client.loop_read()
        # TLS may hold decrypted bytes the socket no longer signals: drain them too.
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            sock = client.socket()
            if not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                break
            rc = client.loop_read()
        self._sync_writer()  # e.g. the SUBSCRIBE queued in on_connect, PUBACKs of commands

    def _writable(self) -> None:
        self.client.loop_write()
        self._sync_writer()
