"""certgen's flow: bootstrap the CA against the registry, then serve the API until stopped.

1. bootstrap: check the registry is reachable and migrated, *then* create or load the CA
   (idempotent) and record the certificates it created now: checking first means a
   certificate is never made while the database that must record it is away. A CA that
   cannot be used (damaged, unreadable, mismatched) stops start-up with one clear line and
   exit status 1; certgen never overwrites an existing CA.
2. serve: uvicorn until SIGTERM or SIGINT (or `stop()`), finishing the requests in flight;
   its access log names paths without their query strings (accesslog.py). With `tls` it
   speaks HTTPS only: TLS 1.2 or newer, TLS 1.2 with forward-secret AEAD suites only (as
   the MQTT broker), with the server certificate the bootstrap issued.

`main.build()` makes the parts; this class only puts them in order.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from f2pipe_certgen.accesslog import drop_query_strings
from f2pipe_certgen.ca import CaError, CertificateAuthority, IssuedCertificate
from f2pipe_certgen.store import PostgresStore, RegistryNotMigratedError

log = logging.getLogger(__name__)

OpenCa = Callable[[], tuple[CertificateAuthority, list[IssuedCertificate]]]
MakeApp = Callable[[CertificateAuthority], FastAPI]

# TLS 1.2's suites: ECDHE with AES-GCM or ChaCha20-Poly1305 only, as the broker's
# (mosquitto.conf): no CBC, no SHA-1 MACs, no static RSA. TLS 1.3's are all AEAD.
TLS12_CIPHERS = ":".join(
    f"ECDHE-{auth}-{suite}"
    for suite in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305")
    for auth in ("ECDSA", "RSA")
)


@dataclass(frozen=True)
class TlsFiles:
    """certgen's server certificate and key (the key file mode 0600)."""

    certfile: Path
    keyfile: Path


class StartupError(RuntimeError):
    """certgen cannot start; the message says why and what to do."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class CertgenService:
    def __init__(
        self,
        *,
        registry: PostgresStore,
        open_ca: OpenCa,
        ca_dir: str,
        make_app: MakeApp,
        host: str,
        port: int,
        tls: TlsFiles | None = None,
    ) -> None:
        self.registry = registry
        self.open_ca = open_ca  # creates what is missing, loads what exists
        self.ca_dir = ca_dir
        self.make_app = make_app
        self.host = host
        self.port = port
        self.tls = tls  # None: plain HTTP (behind a TLS proxy)
        self.server: uvicorn.Server | None = None

    def bootstrap(self) -> CertificateAuthority:
        """The CA, created or loaded once the registry is known to be able to record it."""
        try:
            with self.registry.startup() as registry:
                ca, created = self.open_ca()
                registry.record_issued(created)
        except RegistryNotMigratedError as exc:
            raise StartupError(str(exc)) from exc
        except CaError as exc:
            raise StartupError(f"the CA in {self.ca_dir} cannot be used: {exc}") from exc
        log.info("CA ready", extra={"ca_dir": self.ca_dir, "recorded": [c.serial for c in created]})
        return ca

    def serve(self, ca: CertificateAuthority) -> None:
        """Serve the API with this CA until stopped."""
        drop_query_strings()
        self.server = uvicorn.Server(self._config(self.make_app(ca)))
        log.info(
            "serving",
            extra={"host": self.host, "port": self.port, "scheme": self.scheme},
        )
        self.server.run()
        log.info("certgen stopped")

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    def stop(self) -> None:
        """Finish the requests in flight and return from `serve()` (what SIGTERM does)."""
        if self.server is not None:
            self.server.should_exit = True

    def _config(self, app: FastAPI) -> uvicorn.Config:
        tls = self.tls
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            log_config=None,  # keep configure_logging's structured lines for uvicorn's too
            server_header=False,
            # The enrolment throttle reads X-Forwarded-For itself, from trusted proxies only.
            proxy_headers=False,
            timeout_graceful_shutdown=10,
            ssl_certfile=None if tls is None else str(tls.certfile),
            ssl_keyfile=None if tls is None else str(tls.keyfile),
            ssl_ciphers=TLS12_CIPHERS,
        )
        if tls is not None:
            # uvicorn has no setting for the oldest version: load its context now and set it.
            config.load()
            assert config.ssl is not None
            harden(config.ssl)
        return config


def harden(context: ssl.SSLContext) -> None:
    """TLS 1.2 or newer whatever the system's OpenSSL defaults say; no renegotiation."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
