"""`f2pipe api [--host H] [--port P]`: settings (POSTGRES_*, LOG_*), `build()`, check the
registry is migrated, serve until SIGTERM (exit 0). Plain HTTP on 127.0.0.1:8090 by default."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from f2pipe_api.app import create_app
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.ports import SYSTEM_CLOCK, Clock
from f2pipe_api.service import ApiService, StartupError
from f2pipe_api.settings import Settings
from f2pipe_api.store import PostgresStore
from f2pipe_shared.logs import configure_logging

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
    """The one place the api's parts are made: the registry pool, the metrics, the app."""
    conninfo = settings.postgres.conninfo
    app = create_app(db=PostgresStore(conninfo), metrics=ApiMetrics(), clock=clock)
    return ApiService(app=app, conninfo=conninfo, host=host, port=port)


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
    signal.signal(signal.SIGTERM, _stopped)
    service.serve()
    return 0


def _stopped(signum: int, frame: FrameType | None) -> None:
    del signum, frame
