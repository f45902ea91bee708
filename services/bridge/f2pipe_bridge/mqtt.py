"""The bridge's MQTT side: a persistent MQTT 5 session with manual acknowledgements.

paho delivers messages on its network thread; they go into `inbox` untouched, stamped with
the connection epoch. An acknowledgement is only valid on the connection that delivered the
message: after a reconnect the broker redelivers what we had not acknowledged and may reuse
packet ids, so an old id must never be acknowledged on a new connection.

At most BRIDGE_MAX_IN_FLIGHT messages are held unsettled: the MQTT 5 Receive Maximum asks the
broker for that, and `window` enforces it, because Mosquitto 2.0.11 releases its whole queue
once acknowledgements arrive while a backlog waits (measured: 2,097 in flight for a Receive
Maximum of 500). When the window is full, paho's network thread waits in `on_message`, so it
stops reading: TCP pushes back and the broker keeps the rest.

Acknowledgements go out in bulk (`send_acks`, once per turn of the service loop): paho's
`ack` queues one 4-byte packet per message and wakes its network thread through a socket pair
for each, a syscall, a TLS record and a GIL hand-off per message that made the bridge half as
fast as a bare subscriber. Here the PUBACKs Kafka confirmed since the last turn are queued as
one write (`queue_pubacks`).

The session outlives the bridge's settings: a session that subscribed `stat/#` keeps that
subscription when the bridge comes back in a `$share` group, and would deliver every message
once through each. So a resumed session drops the filters the bridge can name and no longer
wants (`stale_filters`: the plain filters in a group, and a group's it left, named by
BRIDGE_FORMER_GROUP). `leaving=True` (`f2pipe bridge --leave`) subscribes to nothing, drops
every filter it can name, and `end_session` ends the session once what it held is handed
over.
"""

from __future__ import annotations

import logging
import queue
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from f2pipe_bridge.metrics import BridgeMetrics
from f2pipe_bridge.ports import Clock, Inbound, MqttClient
from f2pipe_bridge.settings import BridgeSettings
from f2pipe_shared.settings import MqttSettings

log = logging.getLogger(__name__)

SUBSCRIPTIONS = ("stat/#", "tele/#")
# A PUBACK without reason code or properties (MQTT 5 section 3.4.2.1: reason 0, success).
_PUBACK = struct.Struct("!BBH")
PUBACK = 0x40


def pubacks(mids: Sequence[int]) -> bytes:
    """The PUBACK packets of `mids`, back to back."""
    return b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids])


def queue_pubacks(client: MqttClient, mids: Sequence[int]) -> None:
    """Acknowledge `mids` (QoS 1) on the current connection, in one write when the client is
    paho's: its `_packet_queue` is what `ack` calls per packet (paho-mqtt is pinned in
    pyproject.toml and a unit test checks the method is there). Other clients: one by one."""
    queue_packet = getattr(client, "_packet_queue", None)
    if queue_packet is None:
        for mid in mids:
            client.ack(mid, 1)
        return
    queue_packet(PUBACK, pubacks(mids), 0, 0)


def subscriptions(bridge: BridgeSettings) -> list[str]:
    """The topic filters the bridge subscribes to (shared ones with BRIDGE_SHARED_GROUP)."""
    group = bridge.bridge_shared_group
    return [f"$share/{group}/{t}" if group else t for t in SUBSCRIPTIONS]


def wanted_filters(bridge: BridgeSettings, *, leaving: bool) -> list[str]:
    """What the bridge subscribes to: its filters, or none when it is leaving."""
    return [] if leaving else subscriptions(bridge)


def stale_filters(bridge: BridgeSettings) -> list[str]:
    """Filters a resumed session may hold from earlier settings that this bridge can name and
    does not want: the plain ones, in a group; a former group's (BRIDGE_FORMER_GROUP)."""
    stale = list(SUBSCRIPTIONS) if bridge.bridge_shared_group else []
    former = bridge.bridge_former_group
    if former and former != bridge.bridge_shared_group:
        stale += [f"$share/{former}/{t}" for t in SUBSCRIPTIONS]
    return stale


def named_filters(bridge: BridgeSettings) -> list[str]:
    """Every filter this bridge's settings can name: what `--leave` drops."""
    return list(dict.fromkeys([*SUBSCRIPTIONS, *subscriptions(bridge), *stale_filters(bridge)]))


class MqttSide:
    """The MessageSource of production. `client` is for tests; without it, a paho client
    configured from the settings and wired to this side's callbacks."""

    def __init__(
        self,
        mqtt_settings: MqttSettings,
        bridge: BridgeSettings,
        metrics: BridgeMetrics,
        *,
        client: MqttClient | None = None,
        clock: Clock = time,
        leaving: bool = False,
    ) -> None:
        self.settings = mqtt_settings
        self.leaving = leaving
        self.bridge = bridge
        self.metrics = metrics
        self.clock = clock
        self.inbox: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self.epoch = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.accepting = True
        self.window = threading.BoundedSemaphore(bridge.bridge_max_in_flight)
        # Settled since the last send_acks (the service's thread only): places in the window
        # to free, and the packet ids to acknowledge on connection `acks_epoch`.
        self.freed = 0
        self.acks: list[int] = []
        self.acks_epoch = 0
        # UNSUBSCRIBE packet id -> the filters it asked to drop (paho's thread only).
        self.dropping: dict[int, list[str]] = {}
        self.client: MqttClient = self._paho_client() if client is None else client

    def _paho_client(self) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.bridge.bridge_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if self.settings.mqtt_tls:
            client.tls_set(
                ca_certs=self.settings.mqtt_ca_file,
                certfile=self.bridge.bridge_cert_file,
                keyfile=self.bridge.bridge_key_file,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self.on_connect
        client.on_disconnect = self.on_disconnect
        client.on_message = self.on_message
        client.on_subscribe = self.on_subscribe
        client.on_unsubscribe = self.on_unsubscribe
        return client

    # --- what the service calls ---------------------------------------------------------

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.bridge.bridge_session_expiry
        # The broker sends at most this many unacknowledged messages: our memory bound, and
        # what lets Kafka outages push back onto the broker's queue.
        props.ReceiveMaximum = self.bridge.bridge_max_in_flight
        self.client.connect_async(
            self.settings.mqtt_broker_host,
            self.settings.mqtt_broker_port,
            keepalive=self.settings.mqtt_keepalive,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def settle(self, message: Inbound) -> bool:
        """Kafka has it: its place in the window is freed, and it is acknowledged if the
        connection that delivered it is still the current one, both at the next send_acks."""
        self.freed += 1
        if message.epoch != self.epoch or message.qos == 0:
            if message.qos:
                self.metrics.not_acked.inc()
            return False
        if message.epoch != self.acks_epoch:
            self._drop_acks()
            self.acks_epoch = message.epoch
        self.acks.append(message.mid)
        return True

    def send_acks(self) -> None:
        """Acknowledge what was settled since the last call, and free its places."""
        if self.acks:
            if self.acks_epoch == self.epoch:
                queue_pubacks(self.client, self.acks)
                self.metrics.acked.inc(len(self.acks))
                self.acks = []
            else:
                self._drop_acks()  # the connection changed since: the broker redelivers them
        if self.freed:
            freed, self.freed = self.freed, 0
            self.window.release(freed)

    def _drop_acks(self) -> None:
        self.metrics.not_acked.inc(len(self.acks))
        self.acks = []

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def end_session(self) -> None:
        """Disconnect and have the broker discard the session (MQTT 5: Session Expiry 0 on
        DISCONNECT), its subscriptions with it: nothing more is queued for this client id."""
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        self.client.loop_stop()

    def topics(self) -> list[str]:
        return wanted_filters(self.bridge, leaving=self.leaving)

    # --- paho's callbacks, on its network thread ----------------------------------------

    def on_connect(
        self, client: MqttClient, _u: Any, flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            log.error("MQTT connection refused", extra={"reason": str(reason)})
            return
        self.epoch += 1
        resumed = bool(getattr(flags, "session_present", False))
        if self.leaving:
            self._drop(client, named_filters(self.bridge))
        else:
            # Subscribing again is harmless with a resumed session and needed with a new one;
            # the stale filters go after, so no message finds neither subscription meanwhile.
            client.subscribe([(t, 1) for t in self.topics()])
            if resumed and (stale := stale_filters(self.bridge)):
                self._drop(client, stale)
        self.connected.set()
        self.metrics.connected.set(1)
        self.metrics.connects.inc()
        log.info(
            "MQTT connected",
            extra={"epoch": self.epoch, "session_resumed": resumed, "topics": self.topics()},
        )

    def _drop(self, client: MqttClient, filters: list[str]) -> None:
        _result, mid = client.unsubscribe(filters)
        if mid is not None:  # None: not connected, nothing sent, no UNSUBACK to come
            self.dropping[mid] = filters

    def on_subscribe(
        self, _c: MqttClient, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            # The ACL refuses the bridge's identity: nothing will ever arrive. Say so loudly.
            log.error("MQTT subscription refused", extra={"reasons": refused})
            return
        self.subscribed.set()

    def on_unsubscribe(
        self, _c: MqttClient, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        asked = self.dropping.pop(mid, [])  # the reason codes come in the order asked
        dropped = [f for f, r in zip(asked, reasons, strict=False) if r.value == 0]
        log.info("MQTT filters dropped from the session", extra={"filters": dropped})
        if self.leaving:
            self.subscribed.set()  # the session now collects nothing new: what leaving needs

    def on_disconnect(self, _c: MqttClient, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.epoch += 1
        self.connected.clear()
        self.subscribed.clear()
        self.dropping.clear()  # no UNSUBACK comes for a request of a lost connection
        self.metrics.connected.set(0)
        log.warning("MQTT disconnected", extra={"reason": str(reason)})

    def on_message(self, _c: MqttClient, _u: Any, msg: mqtt.MQTTMessage) -> None:
        while not self.window.acquire(timeout=0.5):
            if not self.accepting:
                return
        if not self.accepting:
            # Shutting down: never acknowledged, so the broker keeps it for later.
            self.window.release()
            return
        self.metrics.received.inc()
        payload = msg.payload if type(msg.payload) is bytes else bytes(msg.payload)
        received_at_us = self.clock.time_ns() // 1000
        self.inbox.put(Inbound(msg.topic, payload, received_at_us, msg.mid, msg.qos, self.epoch))
