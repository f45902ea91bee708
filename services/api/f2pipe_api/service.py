"""The api's flow: check the registry is migrated, then serve the app with uvicorn until
stopped (SIGTERM finishes the requests in flight). Plain HTTP: it listens on loopback unless
`--host` says otherwise (put a TLS proxy in front: tokens must not cross a network in clear).
`main.build()` makes the parts; this class only puts them in order."""

from __future__ import annotations

import logging

import psycopg
import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)

REQUIRED_TABLE = "registry.api_tokens"


class StartupError(RuntimeError):
    """The api cannot start; the message says why and what to do."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class ApiService:
    def __init__(self, *, app: FastAPI, conninfo: str, host: str, port: int) -> None:
        self.app = app
        self.conninfo = conninfo
        self.host = host
        self.port = port
        self.server: uvicorn.Server | None = None

    def check_registry(self) -> None:
        try:
            with psycopg.connect(self.conninfo, connect_timeout=10) as conn:
                row = conn.execute("SELECT to_regclass(%s)", (REQUIRED_TABLE,)).fetchone()
        except psycopg.OperationalError as exc:
            raise StartupError(f"registry database unreachable: {exc}") from exc
        if row is None or row[0] is None:
            raise StartupError(f"{REQUIRED_TABLE} is missing: run `f2pipe migrate` first")

    def serve(self) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=self.host,
                port=self.port,
                log_config=None,
                server_header=False,
                proxy_headers=False,
                timeout_graceful_shutdown=10,
            )
        )
        log.info("serving", extra={"host": self.host, "port": self.port})
        self.server.run()
        log.info("api stopped")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
