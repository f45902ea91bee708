"""`f2pipe api [--host H] [--port P]`: settings (POSTGRES_*, KAFKA_*, MQTT_*, API_*, LOG_*),
`build()`, check the registry is migrated, serve until SIGTERM (exit 0). HTTPS when
API_TLS_CERT_FILE/API_TLS_KEY_FILE are set (docker compose, `f2pipe dev`); plain HTTP on
127.0.0.1:8090 otherwise, with a warning if `--host` takes it beyond this machine."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from f2pipe_api.app import create_app
from f2pipe_api.certgen_client import CertgenClient
from f2pipe_api.command_link import MqttCommander, MqttLink, OnChange
from f2pipe_api.commands import Command
from f2pipe_api.dead_letters import KafkaDeadLetters
from f2pipe_api.hub import Hub
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.ports import SYSTEM_CLOCK, Clock
from f2pipe_api.processed_feed import ProcessedFeed
from f2pipe_api.service import ApiService, StartupError
from f2pipe_api.settings import ApiSettings, Settings
from f2pipe_api.store import PostgresStore
from f2pipe_shared.https import is_loopback
from f2pipe_shared.logs import configure_logging

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="f2pipe api", description="the control plane's HTTP API (controllers, tokens, audit)"
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="listen port (default 8090)")
    return p


def build(settings: Settings, *, host: str, port: int, clock: Clock = SYSTEM_CLOCK) -> ApiService:
    """The one place the api's parts are made: the registry pool, the metrics, certgen's
    client, the dead-letter reader, the MQTT command client, the app."""
    conninfo = settings.postgres.conninfo
    dead_letters = KafkaDeadLetters(
        settings.kafka,
        window=settings.api.api_dead_letter_window,
        timeout=settings.api.api_dead_letter_timeout,
    )
    db = PostgresStore(conninfo)
    metrics = ApiMetrics()
    # The live stream: the hub its clients subscribe to, fed from the processed topic.
    hub = Hub(
        metrics,
        buffer=settings.api.api_stream_buffer,
        max_clients=settings.api.api_stream_max_clients,
        heartbeat=settings.api.api_stream_heartbeat,
    )
    app = create_app(
        db=db,
        metrics=metrics,
        clock=clock,
        certgen=certgen_client(settings.api),
        dead_letters=dead_letters,
        commands=commander(settings, db, on_change=to_stream(hub)),
        command_timeout=settings.api.api_command_timeout,
        stream=ProcessedFeed(settings.kafka, hub, db),
    )
    return ApiService(
        app=app,
        conninfo=conninfo,
        host=host,
        port=port,
        tls=settings.api.tls,
        on_shutdown=hub.close_all,
    )


def certgen_client(settings: ApiSettings) -> CertgenClient | None:
    """certgen's admin API, when API_CERTGEN_URL is set (its token is then required)."""
    if settings.api_certgen_url is None or settings.api_certgen_admin_token is None:
        return None
    return CertgenClient(
        settings.api_certgen_url,
        settings.api_certgen_admin_token,
        ca_file=settings.api_certgen_ca_file,
        timeout=settings.api_certgen_timeout,
    )


def to_stream(hub: Hub) -> OnChange:
    """A command's status change as a `command` frame on the live stream: the same shape
    `GET /v1/commands/{id}` answers with."""

    def push(row: dict[str, Any]) -> None:
        command = Command(**row)
        hub.publish("command", command.mac, command.model_dump(mode="json", exclude={"mac"}))

    return push


def commander(
    settings: Settings, db: PostgresStore, *, on_change: OnChange | None = None
) -> MqttCommander | None:
    """The api's MQTT client for commands, when API_MQTT_CERT_FILE is set."""
    api = settings.api
    if api.api_mqtt_cert_file is None or api.api_mqtt_key_file is None:
        return None
    link = MqttLink(
        host=settings.mqtt.mqtt_broker_host,
        port=settings.mqtt.mqtt_broker_port,
        ca_file=settings.mqtt.mqtt_ca_file,
        cert_file=api.api_mqtt_cert_file,
        key_file=api.api_mqtt_key_file,
        tls=settings.mqtt.mqtt_tls,
    )
    try:
        return MqttCommander(link, db, on_change)  # reads the certificate, key and CA files now
    except OSError as exc:  # ssl.SSLError included
        raise StartupError(
            f"API_MQTT_CERT_FILE, API_MQTT_KEY_FILE or MQTT_CA_FILE cannot be used: {exc}"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.load()
    configure_logging("api", settings.common.log_level, settings.common.log_format)
    try:
        service = build(settings, host=args.host, port=args.port)
        service.check_registry()
    except StartupError as exc:
        print(f"f2pipe api: {exc}", file=sys.stderr)
        return exc.status
    if service.tls is None and not is_loopback(service.host):
        log.warning(
            "API_TLS_CERT_FILE is not set and the api listens beyond this machine: bearer "
            "tokens cross the network in clear unless a TLS proxy is in front",
            extra={"host": service.host},
        )
    signal.signal(signal.SIGTERM, _stopped)
    service.serve()
    return 0


def _stopped(signum: int, frame: FrameType | None) -> None:
    del signum, frame
