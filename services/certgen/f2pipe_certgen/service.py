"""`f2pipe certgen`: bootstrap the CA, record what it created, serve the HTTP API.

1. settings (CA_*, BROKER_*, DEVICE_EXPIRY, CERTGEN_*, POSTGRES_*, F2PIPE_ENV, LOG_*);
2. refuse to serve without CERTGEN_ADMIN_TOKEN unless F2PIPE_ENV=development (exit 2);
3. check the registry is reachable and migrated, *then* bootstrap the CA (idempotent) and
   record the certificates it created now: checking first means a certificate is never made
   while the database that must record it is away;
4. serve with uvicorn until SIGTERM or SIGINT, shutting down gracefully.

A CA that cannot be used (damaged, unreadable, wrong permissions) stops start-up with one
clear line and exit status 1; certgen never overwrites an existing CA.
"""

from __future__ import annotations

import logging
import signal
import sys
from datetime import timedelta
from types import FrameType

import psycopg
import uvicorn
from fastapi import FastAPI

from f2pipe_certgen.app import admin_token, create_app
from f2pipe_certgen.ca import CaError, CertificateAuthority
from f2pipe_certgen.lockout import LockoutPolicy
from f2pipe_certgen.settings import Settings
from f2pipe_certgen.store import record_issued_sync
from f2pipe_shared.logs import configure_logging
from f2pipe_shared.settings import (
    CaSettings,
    CommonSettings,
    Environment,
)

log = logging.getLogger(__name__)

# Listening on every interface is what a container needs; --host narrows it.
DEFAULT_HOST = "0.0.0.0"  # noqa: S104
# The last migration certgen's queries need.
REQUIRED_TABLE = "registry.enrolment_lockouts"
# A shorter token is accepted but warned about: it should be a long random secret.
MIN_TOKEN_LENGTH = 24


class StartupError(RuntimeError):
    """certgen cannot start; the message says why and what to do."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def run(host: str | None, port: int | None, bootstrap_only: bool) -> int:
    loaded = Settings.load()
    common, settings, postgres = loaded.common, loaded.ca, loaded.postgres
    configure_logging("certgen", common.log_level, common.log_format)
    try:
        if not bootstrap_only:
            _check_admin_token(settings, common)
        ca = _bootstrap(settings, postgres.conninfo)
    except StartupError as exc:
        print(f"f2pipe certgen: {exc}", file=sys.stderr)
        return exc.status
    if bootstrap_only:
        return 0
    lockout = LockoutPolicy(
        max_failures=settings.certgen_lockout_failures,
        window=timedelta(seconds=settings.certgen_lockout_window),
        duration=timedelta(seconds=settings.certgen_lockout_duration),
    )
    app = create_app(ca, settings, postgres.conninfo, lockout=lockout)
    _serve(app, host, port or settings.certgen_api_port)
    return 0


def _check_admin_token(settings: CaSettings, common: CommonSettings) -> None:
    token = admin_token(settings)
    if token is None and common.f2pipe_env is not Environment.development:
        raise StartupError(
            "CERTGEN_ADMIN_TOKEN is not set; it is required unless F2PIPE_ENV=development",
            status=2,
        )
    if token is None:
        log.warning("CERTGEN_ADMIN_TOKEN is not set: the admin API is off (development)")
    elif len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
        log.warning("CERTGEN_ADMIN_TOKEN is short; use a long random one (openssl rand -hex 32)")


def _bootstrap(settings: CaSettings, conninfo: str) -> CertificateAuthority:
    with psycopg.connect(conninfo, application_name="f2pipe-certgen", connect_timeout=10) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (REQUIRED_TABLE,)).fetchone()
        if row is None or row[0] is None:
            raise StartupError(
                "the registry database is not migrated for certgen "
                f"({REQUIRED_TABLE} is missing): run `f2pipe migrate` first"
            )
        try:
            ca, created = CertificateAuthority.bootstrap(
                settings,
                key_algorithm=settings.ca_key_algorithm,
                broker_sans=settings.broker_san_list,
            )
        except CaError as exc:
            raise StartupError(f"the CA in {settings.ca_dir} cannot be used: {exc}") from exc
        record_issued_sync(conn, created)
    log.info(
        "CA ready",
        extra={"ca_dir": settings.ca_dir, "recorded": [cert.serial for cert in created]},
    )
    return ca


def _serve(app: FastAPI, host: str | None, port: int) -> None:
    config = uvicorn.Config(
        app,
        host=host or DEFAULT_HOST,
        port=port,
        log_config=None,  # keep configure_logging's structured lines for uvicorn's loggers too
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal under the handler
    # that was installed before it: this no-op one turns that into a normal exit (status 0).
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.Server(config).run()
    log.info("certgen stopped")


def _stopped(signum: int, frame: FrameType | None) -> None:
    del signum, frame
