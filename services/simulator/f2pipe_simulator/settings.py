"""What the simulator reads: its own group (PUBLISH_INTERVAL, SIMULATOR_*) and the shared
ones it needs (MQTT, POSTGRES_*, certgen's address from CaSettings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, NonNegativeFloat, PositiveFloat

from f2pipe_shared import settings as s
from f2pipe_simulator.options import DEFAULT_METRICS_PORT


class SimulatorSettings(s.F2Settings):
    publish_interval: PositiveFloat = Field(
        30.0, le=86_400, description="seconds between a simulated sensor's readings"
    )
    simulator_state_dir: str = Field(
        "simulator-state", description="keys (mode 0600) and certificates of the controllers"
    )
    simulator_claim_codes: str | None = Field(
        None, description="claim codes file (CSV from `f2pipe seed-demo --claim-codes`, or JSON)"
    )
    simulator_certgen_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="certgen's base URL; default https://CERTGEN_API_HOST:CERTGEN_API_PORT",
    )
    simulator_certgen_ca_file: str | None = Field(
        None,
        description="CA certificate certgen's is checked against; default MQTT_CA_FILE, else "
        "CA_DIR/ca.crt",
    )
    simulator_event_interval: PositiveFloat = Field(
        300.0,
        le=86_400,
        description="mean seconds between state changes of one door, button, reader or motion "
        "sensor (normal mode)",
    )
    simulator_reconnect_min: PositiveFloat = Field(
        0.5, le=60, description="first reconnect delay, seconds (then doubling, jittered)"
    )
    simulator_reconnect_max: PositiveFloat = Field(
        30.0, le=3600, description="longest reconnect delay, seconds"
    )
    simulator_enrol_concurrency: s.Count = Field(
        8, le=128, description="enrolment requests in flight at once"
    )
    simulator_connect_concurrency: s.Count = Field(
        50, le=10_000, description="TLS handshakes in flight at once"
    )
    simulator_queue_size: s.Count = Field(
        1000,
        le=60_000,
        description="messages one controller holds while unacknowledged or disconnected "
        "(MQTT packet ids are 16-bit: keep it well below 65,535)",
    )
    simulator_drain_seconds: NonNegativeFloat = Field(
        5.0, le=600, description="on stop, how long to wait for outstanding acknowledgements"
    )
    simulator_connect_timeout: PositiveFloat = Field(
        120.0,
        le=3600,
        description="load mode: how long to wait for every controller to connect first",
    )
    simulator_renew_days: NonNegativeFloat = Field(
        7.0, le=365, description="re-enrol when a certificate expires within this many days"
    )


@dataclass(frozen=True)
class Settings(s.ObservedServiceSettings):
    DEFAULT_METRICS_PORT: ClassVar[int] = DEFAULT_METRICS_PORT

    mqtt: s.MqttSettings
    postgres: s.PostgresSettings
    ca: s.CaSettings
    simulator: SimulatorSettings
