"""`f2pipe api [--host H] [--port P]`: settings (POSTGRES_*, KAFKA_*, API_*, LOG_*),
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

from f2pipe_api.app import create_app
from f2pipe_api.certgen_client import CertgenClient
from f2pipe_api.dead_letters import KafkaDeadLetters
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.ports import SYSTEM_CLOCK, Clock
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
    client, the dead-letter reader, the app."""
    conninfo = settings.postgres.conninfo
    dead_letters = KafkaDeadLetters(
        settings.kafka,
        window=settings.api.api_dead_letter_window,
        timeout=settings.api.api_dead_letter_timeout,
    )
    app = create_app(
        db=PostgresStore(conninfo),
        metrics=ApiMetrics(),
        clock=clock,
        certgen=certgen_client(settings.api),
        dead_letters=dead_letters,
    )
    return ApiService(app=app, conninfo=conninfo, host=host, port=port, tls=settings.api.tls)


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.load()
    configure_logging("api", settings.common.log_level, settings.common.log_format)
    service = build(settings, host=args.host, port=args.port)
    try:
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
