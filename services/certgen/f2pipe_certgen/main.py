"""`f2pipe certgen [--host H] [--port P] [--bootstrap-only]`.

1. settings (CA_*, BROKER_*, DEVICE_EXPIRY, CERTGEN_*, POSTGRES_*, F2PIPE_ENV, LOG_*);
2. refuse to serve without CERTGEN_ADMIN_TOKEN unless F2PIPE_ENV=development (exit 2);
3. `build()` the service, bootstrap the CA and certgen's own server certificate
   (service.py), and serve HTTPS until SIGTERM (exit 0).

Where it listens: --host, else every interface with TLS (CERTGEN_TLS, the default) and only
loopback without: claim codes, generated private keys and the admin token must never cross a
network in clear, so plain HTTP beyond this machine takes an explicit --host (a TLS proxy in
front, on another host).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fastapi import FastAPI

from f2pipe_certgen.admin import admin_token
from f2pipe_certgen.app import create_app
from f2pipe_certgen.ca import CERTGEN, CertificateAuthority, IssuedCertificate
from f2pipe_certgen.lockout import ThrottlePolicy
from f2pipe_certgen.metrics import CertgenMetrics
from f2pipe_certgen.ports import SYSTEM_CLOCK, Clock
from f2pipe_certgen.service import CertgenService, StartupError
from f2pipe_certgen.settings import Settings
from f2pipe_certgen.store import PostgresStore
from f2pipe_shared.https import TlsFiles, is_loopback
from f2pipe_shared.logs import configure_logging
from f2pipe_shared.settings import Environment

log = logging.getLogger(__name__)

# Listening on every interface is what a container needs; --host narrows it. Plain HTTP
# (CERTGEN_TLS=false) stays on loopback unless --host says otherwise.
DEFAULT_HOST = "0.0.0.0"  # noqa: S104
PLAIN_HTTP_HOST = "127.0.0.1"
# A shorter token is accepted but warned about: it should be a long random secret.
MIN_TOKEN_LENGTH = 24


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="f2pipe certgen",
        description="the certificate authority's HTTP API (enrolment, revocation, CRL)",
    )
    p.add_argument(
        "--host",
        help="listen address (default 0.0.0.0 with TLS; 127.0.0.1 with CERTGEN_TLS=false)",
    )
    p.add_argument("--port", type=int, help="listen port (default CERTGEN_API_PORT)")
    p.add_argument(
        "--bootstrap-only",
        action="store_true",
        help="create the CA, broker and service certificates if missing, then exit",
    )
    return p


def build(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> CertgenService:
    """The one place certgen's parts are made: the registry, the CA (when the service
    bootstraps it) and certgen's server certificate, the metrics, the throttle policy and
    the app."""
    ca_settings, own = settings.ca, settings.certgen
    registry = PostgresStore(settings.postgres.conninfo)
    metrics = CertgenMetrics()
    throttle = ThrottlePolicy.of(own)
    names = server_names(settings) if own.certgen_tls else []
    issued = Path(ca_settings.issued_dir)
    tls = TlsFiles(issued / f"{CERTGEN}.crt", issued / f"{CERTGEN}.key") if names else None

    def open_ca() -> tuple[CertificateAuthority, list[IssuedCertificate]]:
        return CertificateAuthority.bootstrap(
            ca_settings,
            key_algorithm=ca_settings.ca_key_algorithm,
            broker_sans=ca_settings.broker_san_list,
            certgen_names=names,
            api_names=own.api_tls_name_list,
            clock=clock,
        )

    def make_app(ca: CertificateAuthority) -> FastAPI:
        return create_app(
            ca, settings=settings, db=registry, metrics=metrics, throttle=throttle, clock=clock
        )

    return CertgenService(
        registry=registry,
        open_ca=open_ca,
        ca_dir=ca_settings.ca_dir,
        make_app=make_app,
        host=host or (DEFAULT_HOST if tls else PLAIN_HTTP_HOST),
        port=port or ca_settings.certgen_api_port,
        tls=tls,
    )


def server_names(settings: Settings) -> list[str]:
    """certgen's server certificate: CERTGEN_TLS_CN first, then CERTGEN_API_HOST (the name
    the other services are given) and CERTGEN_TLS_SANS; the CA adds localhost and loopback."""
    own = settings.certgen
    names = [own.certgen_tls_cn, settings.ca.certgen_api_host.strip(), *own.tls_san_list]
    return list(dict.fromkeys(name for name in names if name))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.load()
    configure_logging("certgen", settings.common.log_level, settings.common.log_format)
    try:
        if not args.bootstrap_only:  # it serves nothing, so it needs no token
            check_admin_token(settings)
        service = build(settings, host=args.host, port=args.port)
        ca = service.bootstrap()
    except StartupError as exc:
        print(f"f2pipe certgen: {exc}", file=sys.stderr)
        return exc.status
    if args.bootstrap_only:
        return 0
    if service.tls is None and not is_loopback(service.host):
        log.warning(
            "CERTGEN_TLS is off and certgen listens beyond this machine: claim codes, private "
            "keys and the admin token cross the network in clear unless a TLS proxy is in front",
            extra={"host": service.host},
        )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal under the handler
    # that was installed before it: this no-op one turns that into a normal exit (status 0).
    signal.signal(signal.SIGTERM, _stopped)
    service.serve(ca)
    return 0


def check_admin_token(settings: Settings) -> None:
    token = admin_token(settings.ca)
    if token is None and settings.common.f2pipe_env is not Environment.development:
        raise StartupError(
            "CERTGEN_ADMIN_TOKEN is not set; it is required unless F2PIPE_ENV=development",
            status=2,
        )
    if token is None:
        log.warning("CERTGEN_ADMIN_TOKEN is not set: the admin API is off (development)")
    elif len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
        log.warning("CERTGEN_ADMIN_TOKEN is short; use a long random one (openssl rand -hex 32)")


def _stopped(signum: int, frame: FrameType | None) -> None:
    del signum, frame
