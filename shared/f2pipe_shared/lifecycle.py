"""How a service process runs: /metrics and /healthz up, SIGTERM wired, run, clean up.

Every service's `main(argv)` ends the same way; this is that ending, written once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from f2pipe_shared.observability import HealthCheck, ObservabilityServer, on_shutdown_signal

log = logging.getLogger(__name__)


class Runnable(Protocol):
    """What `serve` needs of a service."""

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def stop(self) -> None: ...


def serve(
    name: str,
    service: Runnable,
    run: Callable[[], int | None],
    *,
    host: str,
    port: int,
    registry: CollectorRegistry,
    **started: object,
) -> int:
    """Serve /metrics and /healthz, stop the service on SIGTERM/SIGINT, run it to the end.

    `started` goes into the "<name> started" log line, with the port actually bound.
    """
    health: HealthCheck = service.health
    server = ObservabilityServer(host, port, health, registry).start()
    on_shutdown_signal(service.stop)
    log.info(f"{name} started", extra={"metrics_port": server.port, **started})
    try:
        code = run()
    finally:
        server.stop()
    return 0 if code is None else code
