"""What the sink reads: its own group (BATCH_SIZE, FLUSH_INTERVAL, SINK_*) and the shared
ones it needs (the names BATCH_SIZE and FLUSH_INTERVAL are the original deployment's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, NonNegativeFloat, PositiveFloat

from f2pipe_shared import settings as s


class SinkSettings(s.F2Settings):
    batch_size: s.Count = Field(
        5_000, le=1_000_000, description="the sink writes when it holds this many rows…"
    )
    flush_interval: PositiveFloat = Field(
        0.5, le=3600, description="…or when this many seconds passed (0.05 = 50 ms)"
    )
    sink_group_id: s.KafkaName = Field(
        "f2pipe-sink",
        description="Kafka consumer group of the sinks; every instance of one deployment shares it",
    )
    sink_retry_max_seconds: PositiveFloat = Field(
        5.0,
        le=600,
        description="longest wait between write retries while the database is unreachable",
    )
    sink_shutdown_timeout: NonNegativeFloat = Field(
        10.0,
        le=3600,
        description="on SIGTERM, how long to keep retrying the last batch if the database is down",
    )


@dataclass(frozen=True)
class Settings(s.ObservedServiceSettings):
    DEFAULT_METRICS_PORT: ClassVar[int] = 9103

    kafka: s.KafkaSettings
    postgres: s.PostgresSettings
    timescale: s.TimescaleSettings
    sink: SinkSettings

    @property
    def conninfo(self) -> str:
        """The telemetry database (TIMESCALE_*, each falling back to its POSTGRES_* twin)."""
        return self.timescale.conninfo(self.postgres)
