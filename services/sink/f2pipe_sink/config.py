"""Settings only the sink reads (BATCH_SIZE and FLUSH_INTERVAL are shared: SinkSettings).

docs/configuration.md lists them too (f2pipe/configdoc.py). Read with
`f2pipe_shared.settings.load`, so a bad value names its variable and exits 2.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_METRICS_PORT = 9103


class SinkServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

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
