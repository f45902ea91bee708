"""What the api reads: the registry database (POSTGRES_*), Kafka (KAFKA_*: the dead-letter
topic it lists), MQTT (MQTT_*: the broker its commands go to), its own group (API_*: where
certgen's admin API is, how long a dead-letter scan may take, its TLS certificate, its MQTT
identity and command deadline), besides the common group every service reads. Where it
listens is on its command line (`--host`, `--port`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import Field, PositiveFloat, SecretStr, field_validator, model_validator

from f2pipe_shared import settings as s
from f2pipe_shared.https import TlsFiles, is_loopback

Seconds = Annotated[PositiveFloat, Field(le=300)]
# A command's deadline: a second at least (a round trip to a device), an hour at most.
CommandSeconds = Annotated[float, Field(ge=1, le=3600)]


class ApiSettings(s.F2Settings):
    api_tls_cert_file: str | None = Field(
        None,
        description="the api's server certificate (certgen issues ISSUED_DIR/api.crt); set with "
        "API_TLS_KEY_FILE: HTTPS only. Unset: plain HTTP, on 127.0.0.1 unless --host says "
        "otherwise (only behind a TLS proxy: tokens must not cross a network in clear)",
    )
    api_tls_key_file: str | None = Field(
        None, description="its private key (ISSUED_DIR/api.key, mode 0600)"
    )
    api_certgen_url: str | None = Field(
        None,
        description="certgen's base URL for its admin API (https://certgen:8080); unset: the "
        "certificate routes answer 503 certgen_unavailable. http:// only to a loopback address",
    )
    api_certgen_admin_token: SecretStr | None = Field(
        None, description="certgen's CERTGEN_ADMIN_TOKEN (secret; required with API_CERTGEN_URL)"
    )
    api_certgen_ca_file: str | None = Field(
        None,
        description="CA certificate certgen's is checked against (certgen's CA_DIR/ca.crt); "
        "unset: the system's trust store",
    )
    api_certgen_timeout: Seconds = Field(10.0, description="seconds one call to certgen may take")
    api_dead_letter_window: s.Count = Field(
        5000,
        le=100_000,
        description="the newest dead letters of each partition a listing reads at most",
    )
    api_dead_letter_timeout: Seconds = Field(
        10.0, description="seconds a dead-letter listing may take (Kafka's answer included)"
    )
    api_mqtt_cert_file: str | None = Field(
        None,
        description="the api's MQTT client certificate for commands (certgen issues "
        "ISSUED_DIR/api-commands.crt, CN svc-api-commands); set with API_MQTT_KEY_FILE. Unset: "
        "the command routes answer 503 commands_unavailable. The broker is MQTT_BROKER_HOST/"
        "PORT, checked against MQTT_CA_FILE",
    )
    api_mqtt_key_file: str | None = Field(
        None, description="its private key (ISSUED_DIR/api-commands.key, mode 0600)"
    )
    api_command_timeout: CommandSeconds = Field(
        30.0,
        description="seconds a command may take to be confirmed when its request names no "
        "`timeout`; then it is timed_out",
    )

    api_stream_buffer: s.Count = Field(
        1000,
        le=100_000,
        description="items (readings, events) a live-stream client may have waiting; a client "
        "whose buffer is full gets `event: overflow` and is disconnected",
    )
    api_stream_max_clients: s.Count = Field(
        100,
        le=10_000,
        description="live-stream clients at once (GET /v1/stream); one more gets 503 "
        "stream_unavailable",
    )
    api_stream_heartbeat: Seconds = Field(
        15.0, description="seconds between heartbeat comments on an idle live stream"
    )

    @field_validator("api_certgen_url", "api_certgen_admin_token", "api_certgen_ca_file",
                     "api_tls_cert_file", "api_tls_key_file", "api_mqtt_cert_file",
                     "api_mqtt_key_file", mode="before")  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # docker compose's ${VAR:-} passes an empty string for "not set".
        return None if value == "" else value

    @field_validator("api_certgen_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be https://host[:port]")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must be https://host[:port][/path], without credentials or query")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ValueError("http:// only to a loopback address: the admin token is a secret")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _pairs(self) -> Self:
        if self.api_certgen_url and self.api_certgen_admin_token is None:
            raise ValueError("API_CERTGEN_URL needs API_CERTGEN_ADMIN_TOKEN")
        if (self.api_tls_cert_file is None) != (self.api_tls_key_file is None):
            raise ValueError("API_TLS_CERT_FILE and API_TLS_KEY_FILE are set together")
        if (self.api_mqtt_cert_file is None) != (self.api_mqtt_key_file is None):
            raise ValueError("API_MQTT_CERT_FILE and API_MQTT_KEY_FILE are set together")
        return self

    @property
    def tls(self) -> TlsFiles | None:
        if self.api_tls_cert_file is None or self.api_tls_key_file is None:
            return None
        return TlsFiles(Path(self.api_tls_cert_file), Path(self.api_tls_key_file))


@dataclass(frozen=True)
class Settings(s.ServiceSettings):
    postgres: s.PostgresSettings
    kafka: s.KafkaSettings
    mqtt: s.MqttSettings
    api: ApiSettings
