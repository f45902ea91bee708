"""certgen's flow: bootstrap the CA against the registry, then serve the API until stopped.

1. bootstrap: check the registry is reachable and migrated, *then* create or load the CA
   (idempotent) and record the certificates it created now: checking first means a
   certificate is never made while the database that must record it is away. A CA that
   cannot be used (damaged, unreadable, mismatched) stops start-up with one clear line and
   exit status 1; certgen never overwrites an existing CA.
2. serve: uvicorn until SIGTERM or SIGINT (or `stop()`), finishing the requests in flight;
   served as f2pipe_shared.https serves every HTTP service (TLS 1.2+, AEAD suites, access
   log without query strings), with the server certificate the bootstrap issued.

`main.build()` makes the parts; this class only puts them in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from f2pipe_certgen.ca import CaError, CertificateAuthority, IssuedCertificate
from f2pipe_certgen.store import PostgresStore, RegistryNotMigratedError
from f2pipe_shared.https import TlsFiles, server_config

log = logging.getLogger(__name__)

OpenCa = Callable[[], tuple[CertificateAuthority, list[IssuedCertificate]]]
MakeApp = Callable[[CertificateAuthority], FastAPI]


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
        app = self.make_app(ca)
        self.server = uvicorn.Server(
            server_config(app, host=self.host, port=self.port, tls=self.tls)
        )
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
