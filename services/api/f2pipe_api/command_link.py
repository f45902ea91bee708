"""The api's MQTT client for commands (identity svc-api-commands): publishes each stored
command QoS 1 on its `cmnd/…` topic, and turns what comes back into status changes of
registry.commands (command_store):

- PUBACK → `sent`; a PUBACK reason ≥ 0x80 (the ACL refused it: 0x87 not authorized), or a
  publish that cannot be handed to the broker (not connected) → `failed`, with the reason;
- a `stat/…/strike-<n>` or `stat/…/siren-<n>` report → `confirmed` for the oldest open
  command it agrees with (command_rules), or a toggle's revert;
- every second, commands past their deadline → `timed_out` (idempotent SQL).

paho runs its network loop in its own thread; its callbacks hand their work to the app's
event loop (`run_coroutine_threadsafe`), where the database pool lives.

Sessions: MQTT 5 with a clean start and no session expiry. The api needs no session: a
report missed while it is away ends as timed_out. The broker makes the certificate's CN the
client id (mosquitto.conf, use_username_as_clientid), so one identity serves one api
instance; a second instance needs its own identity and ACL entry (docs/security.md).
Each command carries a Message Expiry Interval of its timeout: the broker never delivers it
to a controller after its deadline (a controller offline with a persistent session).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from f2pipe_api import command_store
from f2pipe_api.store import PostgresStore
from f2pipe_shared.payloads import PayloadError, Status, parse_payload
from f2pipe_shared.topics import ComponentKind, TopicError, parse_topic

log = logging.getLogger(__name__)

CLIENT_ID = "svc-api-commands"  # the broker replaces it with the certificate's CN anyway
# The reports that can confirm a command: strikes and sirens, on any connector.
SUBSCRIPTIONS = [
    ("stat/+/access-control-mode/+/strike-1", 1),
    ("stat/+/access-control-mode/+/strike-2", 1),
    ("stat/+/alarm-mode/+/siren-1", 1),
    ("stat/+/alarm-mode/+/siren-2", 1),
]
SWEEP_SECONDS = 1.0
KEEPALIVE = 30
RECONNECT_MIN, RECONNECT_MAX = 1, 30  # seconds

# Called with the command's row (command_store.COLUMNS) when it is stored and at each change
# of status (and a toggle's revert), on the event loop: it must not block. The live stream's
# port; None: nobody listens.
OnChange = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class MqttLink:
    """Where and as whom: the broker, its CA, the api's client certificate."""

    host: str
    port: int
    ca_file: str
    cert_file: str
    key_file: str
    tls: bool = True


class MqttCommander:
    """The CommandPort (ports.py) over paho-mqtt: `start`/`stop` by the app's lifespan."""

    def __init__(
        self, link: MqttLink, db: PostgresStore, on_change: OnChange | None = None
    ) -> None:
        self.link = link
        self.db = db
        self.on_change = on_change
        # Guards the two maps only, never held around a paho call: paho runs on_publish
        # holding its own message lock, which publish() takes too (no lock-order inversion).
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}  # MQTT packet id → command id
        self._early: dict[int, ReasonCode] = {}  # a PUBACK that beat publish() returning
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._stopping = False
        self._backoff = RECONNECT_MIN
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        # No reconnect after a drop (reconnect_on_failure=False): paho would publish what it
        # still holds again, possibly after the command's deadline. A fresh client instead,
        # with an empty queue: each command is published at most once (_on_disconnect).
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=CLIENT_ID,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        if self.link.tls:
            client.tls_set(self.link.ca_file, self.link.cert_file, self.link.key_file)
        client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)  # the first connection's
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background (the api serves while the broker is away)."""
        self._loop = asyncio.get_running_loop()
        self._connect()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="command-sweeper")

    def _connect(self) -> None:
        self._client.connect_async(self.link.host, self.link.port, keepalive=KEEPALIVE,
                                   clean_start=True)  # fmt: skip
        self._client.loop_start()

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._sweeper, self._reconnecting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    def _restart(self) -> None:
        """On the event loop, after the connection dropped: a fresh client, after a pause
        that doubles while connections keep dropping (RECONNECT_MIN..MAX seconds)."""
        if self._stopping or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        self._reconnecting = asyncio.create_task(self._reconnect(), name="command-reconnect")

    async def _reconnect(self) -> None:
        old, delay = self._client, self._backoff
        self._backoff = min(self._backoff * 2, RECONNECT_MAX)
        await asyncio.to_thread(old.loop_stop)  # its thread is ending: no reconnect_on_failure
        await asyncio.sleep(delay)
        if self._stopping:
            return
        self._client = self._make_client()
        self._connect()

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    # -- sending ---------------------------------------------------------------------------

    async def send(
        self, command: dict[str, Any], wire: bytes, seconds: float
    ) -> dict[str, Any] | None:
        """Publish a stored command; the failed row when it could not be handed over."""
        self._changed(command)  # queued: the hook sees every command from its start
        command_id, topic = command["id"], command["topic"]
        if not self._client.is_connected():
            return await self._fail(command_id, "the api is not connected to the MQTT broker")
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.MessageExpiryInterval = max(1, math.ceil(seconds))
        info = self._client.publish(topic, wire, qos=1, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return await self._fail(command_id, f"publish: {mqtt.error_string(info.rc)}")
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = command_id
                return None
        if early.is_failure:
            return await self._fail(command_id, _refusal(early))
        await self._sent(command_id)
        return None

    async def _fail(self, command_id: int, detail: str) -> dict[str, Any] | None:
        row = await command_store.mark_failed(self.db, command_id, detail)
        self._changed(row)
        return row

    # -- paho's thread ---------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: Any, reason: ReasonCode, _p: object
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT connection refused", extra={"reason": str(reason)})
            return
        log.info("MQTT connected", extra={"host": self.link.host, "port": self.link.port})
        self._backoff = RECONNECT_MIN
        client.subscribe(SUBSCRIPTIONS)

    def _on_disconnect(
        self, client: mqtt.Client, _u: object, _f: Any, reason: ReasonCode, _p: object
    ) -> None:
        if self._stopping or client is not self._client:
            return
        log.warning("MQTT disconnected", extra={"reason": str(reason)})
        # What was in flight stays queued or sent: its report or its deadline decides.
        with self._lock:
            self._pending.clear()
            self._early.clear()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._restart)

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: object
    ) -> None:
        with self._lock:
            command_id = self._pending.pop(mid, None)
            if command_id is None:
                self._early[mid] = reason  # send() has not mapped it yet: it looks here
                return
        if reason.is_failure:
            self._submit(self._fail(command_id, _refusal(reason)))
        else:
            self._submit(self._sent(command_id))

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            topic = parse_topic(message.topic)
            report = parse_payload(topic, bytes(message.payload))
        except (TopicError, PayloadError):
            return  # not ours to judge: the bridge dead-letters it
        if topic.component_kind not in (ComponentKind.STRIKE, ComponentKind.SIREN):
            return
        if isinstance(report, Status):
            self._submit(self._report(topic.mac, topic.connector, topic.component, report.status))

    def _submit(self, work: Coroutine[Any, Any, object]) -> None:
        if self._loop is None or self._loop.is_closed():
            work.close()
            return
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        future.add_done_callback(_log_failure)

    # -- the event loop's side -------------------------------------------------------------

    async def _sent(self, command_id: int) -> None:
        self._changed(await command_store.mark_sent(self.db, command_id))

    async def _report(self, mac: str, connector: str, component: str, status: bool) -> None:
        row = await command_store.confirm_report(self.db, mac, connector, component, status)
        self._changed(row)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                for row in await command_store.sweep(self.db):
                    self._changed(row)
            except Exception:
                log.exception("command deadline sweep failed; trying again")

    def _changed(self, row: dict[str, Any] | None) -> None:
        if row is None or self.on_change is None:
            return
        try:
            self.on_change(row)
        except Exception:  # a listener's bug must not stop the bookkeeping
            log.exception("command on_change hook failed")


def _refusal(reason: ReasonCode) -> str:
    return f"the broker refused it: {reason} (0x{reason.value:02x})"


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("command update failed", exc_info=future.exception())
