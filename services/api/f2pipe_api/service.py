"""The api's flow: check the registry is migrated, then serve the app with uvicorn until
stopped (SIGTERM finishes the requests in flight). HTTPS with `tls` (as certgen: see
f2pipe_shared.https); without it plain HTTP, which `main` keeps on loopback unless `--host`
says otherwise. `main.build()` makes the parts; this class only puts them in order."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import psycopg
import uvicorn
from fastapi import FastAPI

from f2pipe_api import console
from f2pipe_shared.https import TlsFiles, server_config

log = logging.getLogger(__name__)

REQUIRED_TABLE = "registry.api_tokens"


class StartupError(RuntimeError):
    """The api cannot start; the message says why and what to do."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class _Server(uvicorn.Server):
    """uvicorn, telling the app when shutdown begins: open streams never finish by
    themselves, and uvicorn would otherwise wait its whole graceful timeout for them."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.on_shutdown()
        await super().shutdown(sockets=sockets)


class ApiService:
    def __init__(
        self,
        *,
        app: FastAPI,
        conninfo: str,
        host: str,
        port: int,
        tls: TlsFiles | None = None,
        on_shutdown: Callable[[], None] = lambda: None,
    ) -> None:
        self.app = app
        self.on_shutdown = on_shutdown
        self.conninfo = conninfo
        self.host = host
        self.port = port
        self.tls = tls  # None: plain HTTP (loopback, or behind a TLS proxy)
        self.server: uvicorn.Server | None = None

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    def check_registry(self) -> None:
        try:
            with psycopg.connect(self.conninfo, connect_timeout=10) as conn:
                row = conn.execute("SELECT to_regclass(%s)", (REQUIRED_TABLE,)).fetchone()
        except psycopg.OperationalError as exc:
            raise StartupError(f"registry database unreachable: {exc}") from exc
        if row is None or row[0] is None:
            raise StartupError(f"{REQUIRED_TABLE} is missing: run `f2pipe migrate` first")

    def serve(self) -> None:
        config = server_config(self.app, host=self.host, port=self.port, tls=self.tls)
        self.server = _Server(config, self.on_shutdown)
        log.info(
            "serving",
            extra={
                "host": self.host,
                "port": self.port,
                "scheme": self.scheme,
                "console": f"{self.scheme}://{self.host}:{self.port}/console/",
            },
        )
        if missing := console.missing_assets():
            log.warning("console assets missing: run scripts/build-console.sh",
                        extra={"missing": missing})  # fmt: skip
        self.server.run()
        log.info("api stopped")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
