"""Prometheus metrics and a health endpoint on a small HTTP server, plus graceful signals.

Services without a web framework of their own (bridge, sink, simulator) serve `/metrics`
and `/healthz` from a daemon thread; certgen and the processor add the same routes to the
web servers they already run.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


class ObservabilityServer:
    """`GET /metrics` (Prometheus text) and `GET /healthz` (JSON, 200 healthy / 503 not)."""

    def __init__(
        self,
        host: str,
        port: int,
        health: HealthCheck,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        handler = _handler_class(health, registry)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="observability", daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def start(self) -> ObservabilityServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_class(
    health: HealthCheck, registry: CollectorRegistry
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif self.path in ("/healthz", "/health"):
                ok, details = health()
                body = json.dumps({"status": "ok" if ok else "unhealthy", **details}, default=str)
                self._send(200 if ok else 503, "application/json", body.encode())
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the service's own log lines

    return Handler


def on_shutdown_signal(stop: Callable[[], None]) -> None:
    """Call `stop` on the first SIGTERM/SIGINT; a second one exits at once."""
    received = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        if received.is_set():
            log.warning("second signal, exiting now", extra={"signal": signum})
            raise SystemExit(128 + signum)
        received.set()
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
