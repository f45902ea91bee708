"""What the sink reads: its own group (BATCH_SIZE, FLUSH_INTERVAL, SINK_*) and the shared
ones it needs (the names BATCH_SIZE and FLUSH_INTERVAL are the original deployment's)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from f2pipe_shared.settings import (
    CommonSettings,
    F2Settings,
    KafkaSettings,
    ObservabilitySettings,
    PostgresSettings,
    ServiceSettings,
    TimescaleSettings,
)

DEFAULT_METRICS_PORT = 9103


class SinkSettings(F2Settings):
    batch_size: int = Field(
        5_000, ge=1, le=1_000_000, description="the sink writes when it holds this many rows…"
    )
    flush_interval: float = Field(
        0.5, gt=0, le=3600, description="…or when this many seconds passed (0.05 = 50 ms)"
    )
    sink_group_id: str = Field(
        "f2pipe-sink",
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="Kafka consumer group of the sinks; every instance of one deployment shares it",
    )
    sink_retry_max_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="longest wait between write retries while the database is unreachable",
    )
    sink_shutdown_timeout: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="on SIGTERM, how long to keep retrying the last batch if the database is down",
    )


@dataclass(frozen=True)
class Settings(ServiceSettings):
    common: CommonSettings
    observability: ObservabilitySettings
    kafka: KafkaSettings
    postgres: PostgresSettings
    timescale: TimescaleSettings
    sink: SinkSettings

    @property
    def conninfo(self) -> str:
        """The telemetry database (TIMESCALE_*, each falling back to its POSTGRES_* twin)."""
        return self.timescale.conninfo(self.postgres)

    @property
    def metrics_port(self) -> int:
        port = self.observability.metrics_port
        return DEFAULT_METRICS_PORT if port is None else port
