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
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
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


def subscriptions(bridge: BridgeSettings) -> list[str]:
    """The topic filters the bridge subscribes to (shared ones with BRIDGE_SHARED_GROUP)."""
    group = bridge.bridge_shared_group
    return [f"$share/{group}/{t}" if group else t for t in SUBSCRIPTIONS]


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
    ) -> None:
        self.settings = mqtt_settings
        self.bridge = bridge
        self.metrics = metrics
        self.clock = clock
        self.inbox: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self.epoch = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.accepting = True
        self.window = threading.BoundedSemaphore(bridge.bridge_max_in_flight)
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
        """Kafka has it: free its place in the window, and acknowledge it if the connection
        that delivered it is still the current one."""
        self.window.release()
        if message.epoch != self.epoch or message.qos == 0:
            if message.qos:
                self.metrics.not_acked.inc()
            return False
        self.client.ack(message.mid, message.qos)
        self.metrics.acked.inc()
        return True

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def topics(self) -> list[str]:
        return subscriptions(self.bridge)

    # --- paho's callbacks, on its network thread ----------------------------------------

    def on_connect(self, client: MqttClient, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            log.error("MQTT connection refused", extra={"reason": str(reason)})
            return
        self.epoch += 1
        # Subscribing again is harmless with a resumed session and needed with a new one.
        client.subscribe([(t, 1) for t in self.topics()])
        self.connected.set()
        self.metrics.connected.set(1)
        self.metrics.connects.inc()
        log.info("MQTT connected", extra={"epoch": self.epoch, "topics": self.topics()})

    def on_subscribe(
        self, _c: MqttClient, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            # The ACL refuses the bridge's identity: nothing will ever arrive. Say so loudly.
            log.error("MQTT subscription refused", extra={"reasons": refused})
            return
        self.subscribed.set()

    def on_disconnect(self, _c: MqttClient, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.epoch += 1
        self.connected.clear()
        self.subscribed.clear()
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
