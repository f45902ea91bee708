"""What the bridge reads: its own group (BRIDGE_*) and the shared ones it needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from f2pipe_shared import settings as s


class BridgeSettings(s.F2Settings):
    bridge_batch_max_messages: s.Count = Field(
        500, le=100_000, description="most MQTT messages in one raw-iot-data record"
    )
    bridge_batch_linger_ms: int = Field(
        50, ge=0, le=60_000, description="longest a raw batch waits before it is sent, ms"
    )
    bridge_shared_group: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="subscribe through `$share/<group>/…` so several bridges split the load",
    )
    bridge_former_group: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="a `$share` group this bridge's session may still be in: its filters are "
        "dropped once the bridge's own are subscribed",
    )
    bridge_max_payload_bytes: int = Field(
        16_384, ge=64, le=1_000_000, description="larger MQTT payloads are dead-lettered"
    )
    bridge_client_id: str = Field(
        "f2pipe-bridge",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="MQTT client id; fixed, so the broker keeps the session across restarts",
    )
    bridge_max_in_flight: s.Count = Field(
        5_000,
        le=65_535,
        description="unacknowledged messages the broker may send (MQTT 5 Receive Maximum)",
    )
    bridge_session_expiry: int = Field(
        604_800, ge=60, description="seconds the broker keeps the session while the bridge is away"
    )
    bridge_cert_file: str = Field(
        "issued/bridge.crt", description="the bridge's client certificate"
    )
    bridge_key_file: str = Field("issued/bridge.key", description="its private key (mode 0600)")


@dataclass(frozen=True)
class Settings(s.ObservedServiceSettings):
    DEFAULT_METRICS_PORT: ClassVar[int] = 9101

    kafka: s.KafkaSettings
    mqtt: s.MqttSettings
    bridge: BridgeSettings
