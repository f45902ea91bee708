"""What the processor reads: its own group (PROCESSOR_*) and the shared ones it needs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

from pydantic import Field, PositiveFloat

from f2pipe_shared import settings as s

_INTERVAL = re.compile(r"^(\d+) (hour|day|week|month|year)s?$")
_UNIT_DAYS = {"hour": 1 / 24, "day": 1, "week": 7, "month": 30, "year": 365}


class ProcessorSettings(s.F2Settings):
    processor_app_id: str = Field(
        "f2pipe-processor",
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="Faust app id: the consumer group, and the prefix of the table's changelog",
    )
    processor_max_future_seconds: PositiveFloat = Field(
        600.0,
        description="a device timestamp further ahead of the processor's clock is implausible",
    )
    processor_max_age_days: PositiveFloat | None = Field(
        None, description="an older device timestamp is implausible; unset = TELEMETRY_RETENTION"
    )
    processor_local_cache_size: int = Field(
        500_000, ge=100, description="in-process registry cache entries (cleared when full)"
    )
    processor_cache_ttl_seconds: s.Count = Field(
        3600, description="Redis registry entries expire after this (invalidation is NOTIFY)"
    )
    processor_redis_prefix: str = Field(
        "f2pipe:processor:", min_length=1, description="prefix of the processor's Redis keys"
    )
    processor_redis_retry_seconds: PositiveFloat = Field(
        5.0, description="after a Redis failure, PostgreSQL alone answers this long"
    )
    processor_redis_timeout_seconds: PositiveFloat = Field(
        0.5,
        le=30,
        description="connect and reply timeout of each Redis call: what a frozen Redis costs "
        "a lookup, once per PROCESSOR_REDIS_RETRY_SECONDS at most",
    )
    processor_redis_probe_seconds: PositiveFloat = Field(
        2.0,
        le=300,
        description="how often a background PING checks Redis (redis_up, /healthz); below "
        "PROCESSOR_REDIS_RETRY_SECONDS, lookups never try a Redis that stays down",
    )
    processor_postgres_retry_max_seconds: PositiveFloat = Field(
        5.0, description="longest wait between attempts while PostgreSQL is down"
    )
    processor_commit_interval_seconds: PositiveFloat = Field(
        1.0, le=300, description="how often Faust commits the offsets already safe"
    )
    processor_max_inflight: s.Count = Field(
        32, le=10_000, description="raw records whose output may await Kafka's ack at once"
    )
    processor_latest_flush_seconds: PositiveFloat = Field(
        5.0,
        le=300,
        description="how often the latest-value table's changes go to its changelog (a "
        "restarted worker replays the changelog; /latest itself is always current)",
    )
    connectivity_timeout: PositiveFloat | None = Field(
        None,
        le=86_400,
        description="seconds without a message after which a controller is offline (an event, "
        "and its status in the api); unset = 3 x PUBLISH_INTERVAL",
    )
    processor_data_dir: str | None = Field(
        None, description="Faust's data directory; unset = a directory under the system temp"
    )

    def max_age(self, telemetry_retention: str) -> timedelta:
        """How old a reading may be: our own setting, else the database's retention."""
        if self.processor_max_age_days is not None:
            return timedelta(days=self.processor_max_age_days)
        return interval_to_timedelta(telemetry_retention)


class PublishSettings(s.F2Settings):
    """The devices' publish interval, which the default connectivity timeout derives from.
    Documented with the simulator's settings (it is the same PUBLISH_INTERVAL)."""

    publish_interval: PositiveFloat = Field(30.0, le=86_400)


@dataclass(frozen=True)
class Settings(s.ObservedServiceSettings):
    # One port for /metrics, /healthz and /latest/<device_id>: Faust's web server, Faust's
    # conventional port. METRICS_PORT overrides it.
    DEFAULT_METRICS_PORT: ClassVar[int] = 6066

    kafka: s.KafkaSettings
    postgres: s.PostgresSettings
    redis: s.RedisSettings
    telemetry: s.TelemetryPolicySettings
    processor: ProcessorSettings
    publish: PublishSettings

    @property
    def connectivity_timeout(self) -> float:
        """CONNECTIVITY_TIMEOUT, or three publish intervals: one lost message is no outage."""
        timeout = self.processor.connectivity_timeout
        return 3 * self.publish.publish_interval if timeout is None else timeout

    @property
    def port(self) -> int:
        """The Faust web server's port: `metrics_port`, by the name the worker uses."""
        return self.metrics_port


def interval_to_timedelta(interval: str) -> timedelta:
    """``'365 days'``, ``'2 years'``… as TELEMETRY_RETENTION spells them (month = 30 days)."""
    match = _INTERVAL.fullmatch(interval.strip())
    if match is None:
        raise ValueError(f"not an interval like '365 days': {interval!r}")
    return timedelta(days=int(match[1]) * _UNIT_DAYS[match[2]])
