"""Typed settings read once from the environment, with the original deployment's names.

Every settings group derives from `F2Settings`. Groups several services read live here;
a group only one service reads lives in that service's `settings.py`, beside a frozen
dataclass `Settings(ServiceSettings)` whose fields are the groups the service reads (the
base brings `common`; `ObservedServiceSettings` adds `observability` and the metrics port),
loaded at once by `Settings.load()`. A bad value raises `SettingsError` whose message names
the environment variable, and the command line turns that into a one-line error and exit 2.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, get_type_hints

from psycopg.conninfo import make_conninfo
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Field types for shapes several settings share. A field gives its default and description
# and may tighten the bound: `x: Count = Field(8, le=128, description="…")`. Durations and
# sizes that must be above (or may be) zero use pydantic's `PositiveFloat` (`NonNegativeFloat`)
# the same way.
Port = Annotated[int, Field(ge=1, le=65535)]
"""A TCP port to connect to."""
ListenPort = Annotated[int, Field(ge=0, le=65535)]
"""A TCP port to listen on; 0 = any free one."""
Count = Annotated[int, Field(ge=1)]
"""How many of something: one at least."""
KafkaName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]
"""A Kafka topic or consumer group."""
SslMode = Annotated[str, Field(pattern=r"^(disable|allow|prefer|require|verify-ca|verify-full)$")]
"""A libpq sslmode."""


class SettingsError(ValueError):
    """One or more environment variables hold a value f2pipe cannot use."""


class Environment(StrEnum):
    development = "development"
    production = "production"


class F2Settings(BaseSettings):
    """The base of every settings group: read from the environment, unknown names ignored."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)


class CommonSettings(F2Settings):
    f2pipe_env: Environment = Field(
        Environment.production,
        description="`development` relaxes what production requires (e.g. certgen's admin token)",
    )
    log_level: str = Field(
        "INFO",
        pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$",
        description="DEBUG, INFO, WARNING, ERROR or CRITICAL",
    )
    log_format: str = Field(
        "json", pattern=r"^(json|text)$", description="`json` (one object per line) or `text`"
    )


class ObservabilitySettings(F2Settings):
    metrics_host: str = Field(
        "127.0.0.1",
        description="where /metrics and /healthz listen (containers: 0.0.0.0, for Prometheus)",
    )
    metrics_port: ListenPort | None = Field(
        None, description="their port; unset = the service's default"
    )


class KafkaSettings(F2Settings):
    kafka_bootstrap_servers: str = Field(
        "localhost:9092",
        min_length=1,
        description="Kafka bootstrap servers, `host:port[,host:port…]`",
    )
    kafka_raw_topic: KafkaName = Field(
        "raw-iot-data", description="bridge → processor: batches of MQTT messages"
    )
    kafka_processed_topic: KafkaName = Field(
        "processed-iot-data", description="processor → sink: batches of decoded readings and events"
    )
    kafka_deadletter_topic: KafkaName = Field(
        "iot-dead-letter", description="what a stage cannot handle, with the reason in headers"
    )
    kafka_raw_partitions: Count = Field(
        6, le=1024, description="partitions of the raw topic when f2pipe creates it"
    )
    kafka_processed_partitions: Count = Field(
        6, le=1024, description="partitions of the processed topic when f2pipe creates it"
    )
    kafka_replication_factor: Count = Field(
        1, le=16, description="replication factor of topics f2pipe creates"
    )
    # Consumer-group joins wait for this on some brokers (Tansu, docs/architecture.md): short
    # in development.
    kafka_max_poll_interval_ms: int = Field(
        300_000, ge=1_000, description="consumer max.poll.interval.ms / rebalance timeout"
    )
    kafka_session_timeout_ms: int = Field(
        45_000, ge=1_000, description="consumer session.timeout.ms"
    )
    # docs/security.md: compose runs Kafka with SASL_SSL and one user per service; the local
    # stack's Tansu can do neither, so PLAINTEXT on loopback is the default.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (production)"
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism when the protocol is SASL_*"
    )
    kafka_sasl_username: str | None = Field(
        None, description="this service's Kafka user (SASL_*; required there)"
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="its password (secret; required with SASL_*)"
    )
    kafka_ssl_ca_file: str | None = Field(
        None, description="CA certificate Kafka's is checked against (SSL, SASL_SSL)"
    )

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Self:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        return self


class PostgresSettings(F2Settings):
    """The registry database (devices, templates, certificates)."""

    postgres_host: str = Field("localhost", description="registry database host")
    postgres_port: Port = Field(5432, description="registry database port")
    postgres_user: str = Field("f2pipe", description="registry database user")
    postgres_password: SecretStr = Field(
        SecretStr(""), description="registry database password (secret)"
    )
    postgres_db: str = Field("f2pipe", description="registry database name")
    postgres_sslmode: SslMode = Field("prefer", description="libpq sslmode")

    @property
    def conninfo(self) -> str:
        secret = self.postgres_password.get_secret_value()
        return make_conninfo(
            host=self.postgres_host,
            port=self.postgres_port,
            user=self.postgres_user,
            dbname=self.postgres_db,
            sslmode=self.postgres_sslmode,
            **({"password": secret} if secret else {}),
        )


class TimescaleSettings(F2Settings):
    """The telemetry database; every unset TIMESCALE_* falls back to its POSTGRES_* twin."""

    timescale_host: str | None = Field(None, description="telemetry database host")
    timescale_port: Port | None = Field(None, description="telemetry database port")
    timescale_user: str | None = Field(None, description="telemetry database user")
    timescale_password: SecretStr | None = Field(
        None, description="telemetry database password (secret)"
    )
    timescale_db: str | None = Field(None, description="telemetry database name")
    timescale_sslmode: SslMode | None = Field(None, description="libpq sslmode")

    def resolved(self, registry: PostgresSettings) -> PostgresSettings:
        """`registry` with each TIMESCALE_* that is set (and not empty) in place of its twin."""
        own = {
            f"postgres_{name.removeprefix('timescale_')}": value for name, value in self if value
        }
        return registry.model_copy(update=own)

    def conninfo(self, registry: PostgresSettings) -> str:
        return self.resolved(registry).conninfo


class TelemetryPolicySettings(F2Settings):
    """How long readings live and when chunks compress (TimescaleDB; see docs/data_model.md)."""

    telemetry_retention: str = Field(
        "365 days",
        pattern=r"^\d+ (hours?|days?|weeks?|months?|years?)$",
        description="readings and events older than this are dropped",
    )
    telemetry_compress_after: str = Field(
        "7 days",
        pattern=r"^\d+ (hours?|days?|weeks?|months?)$",
        description="chunks older than this are compressed; keep it past the replay window",
    )
    telemetry_chunk_interval: str = Field(
        "1 day", pattern=r"^\d+ (hours?|days?|weeks?)$", description="hypertable chunk interval"
    )


class RedisSettings(F2Settings):
    redis_host: str = Field("localhost", description="Redis host (device-id cache)")
    redis_port: Port = Field(6379, description="Redis port")
    redis_db: int = Field(0, ge=0, le=15, description="Redis database number")
    redis_username: str | None = Field(
        None, description="Redis ACL user (docker-compose: `processor`); unset = `default`"
    )
    redis_password: SecretStr | None = Field(None, description="Redis password (secret)")

    @property
    def url(self) -> str:
        """Where Redis is; the credentials travel apart (`credentials`), never in a URL."""
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"

    @property
    def credentials(self) -> dict[str, str]:
        password = self.redis_password.get_secret_value() if self.redis_password else ""
        user = {"username": self.redis_username} if self.redis_username else {}
        return {**user, "password": password} if password else user


class MqttSettings(F2Settings):
    mqtt_broker_host: str = Field("localhost", description="Mosquitto host")
    mqtt_broker_port: Port = Field(8883, description="Mosquitto TLS port")
    mqtt_keepalive: int = Field(30, ge=5, le=3600, description="MQTT keepalive, seconds")
    mqtt_ca_file: str = Field(
        "ca/ca.crt", description="CA certificate the broker's is checked against"
    )
    mqtt_tls: bool = Field(
        True, description="mutual TLS (always on in production; off only for plain test brokers)"
    )


class CaSettings(F2Settings):
    ca_cn: str = Field(
        "f2pipe CA", min_length=1, max_length=64, description="the CA certificate's common name"
    )
    ca_expiry: Count = Field(3650, le=36500, description="CA certificate lifetime, days")
    broker_cn: str = Field(
        "mqtt_broker",
        min_length=1,
        max_length=64,
        description="the broker certificate's common name (and DNS SAN)",
    )
    broker_expiry: Count = Field(825, le=3650, description="broker certificate lifetime, days")
    device_expiry: Count = Field(365, le=3650, description="device certificate lifetime, days")
    ca_dir: str = Field("ca", description="where the CA key and certificate live (key mode 0600)")
    issued_dir: str = Field("issued", description="where issued service certificates are written")
    certgen_api_host: str = Field(
        "localhost",
        description="certgen's host, for clients (also a name in certgen's server certificate)",
    )
    certgen_api_port: Port = Field(8080, description="certgen's port")
    ca_key_algorithm: Literal["ec", "rsa"] = Field(
        "ec", description="key type of the CA and broker: `ec` (P-256) or `rsa` (3072 bits)"
    )
    broker_sans: str = Field(
        "",
        pattern=r"^[A-Za-z0-9.:*,-]*$",
        description="extra DNS names/IPs for the broker certificate, comma-separated",
    )
    certgen_admin_token: SecretStr | None = Field(
        None, description="bearer token for certgen's admin API (secret; required in production)"
    )

    @property
    def broker_san_list(self) -> list[str]:
        return [name.strip() for name in self.broker_sans.split(",") if name.strip()]


# Every shared group, with who reads it: docs/configuration.md is generated from these and
# each service's own groups (f2pipe/configdoc.py).
GROUPS: tuple[tuple[type[BaseSettings], str], ...] = (
    (CommonSettings, "all services"),
    (ObservabilitySettings, "bridge, processor, sink, simulator (certgen serves its own port)"),
    (KafkaSettings, "bridge, processor, sink, api (the dead-letter topic)"),
    (PostgresSettings, "registry database: certgen, api, processor, migrate, seed-demo"),
    (
        TimescaleSettings,
        "telemetry database: sink, migrate; an unset one takes its POSTGRES_* value",
    ),
    (TelemetryPolicySettings, "migrate, TimescaleDB only"),
    (RedisSettings, "processor"),
    (MqttSettings, "bridge, simulator"),
    (CaSettings, "certgen; simulator (certgen's address); broker-config (directories)"),
)

S = TypeVar("S", bound=BaseSettings)


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """Base of a service's `Settings`: a frozen dataclass whose fields are settings groups."""

    common: CommonSettings

    @classmethod
    def load(cls) -> Self:
        """Every group from the environment; SettingsError names the first bad variable."""
        hints = get_type_hints(cls)
        return cls(**{f.name: load(hints[f.name]) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class ObservedServiceSettings(ServiceSettings):
    """A service that serves /metrics and /healthz, on its own DEFAULT_METRICS_PORT unless
    METRICS_PORT says otherwise."""

    DEFAULT_METRICS_PORT: ClassVar[int]

    observability: ObservabilitySettings

    @property
    def metrics_port(self) -> int:
        port = self.observability.metrics_port
        return self.DEFAULT_METRICS_PORT if port is None else port


def load(cls: type[S], **overrides: Any) -> S:
    """Read `cls` from the environment, naming the variable in any error."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


_SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "KEY")


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        if not error["loc"]:  # a check across fields: its message names them
            problems.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        variable = str(error["loc"][0]).upper()
        value = error.get("input")
        secret = any(word in variable for word in _SECRET_WORDS)
        shown = "" if secret or isinstance(value, dict) or value is None else f"={value!r}"
        problems.append(f"{variable}{shown}: {error['msg']}")
    return "invalid settings: " + "; ".join(problems)
