"""The api's HTTP app: `create_app()` puts the parts `main.build()` made where the handlers'
dependencies (deps.py) find them, and includes the routes.

Routes: controllers (controllers.py), tokens and audit (admin.py), and /healthz and /metrics
here, the only ones without a token, and the console's static files at /console/
(console.py). Errors are problem details (problems.py); request bodies
are limited to `MAX_BODY_BYTES`. The schema is served at /openapi.json; there is no docs UI.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Literal

from fastapi import APIRouter, FastAPI, Response
from pydantic import BaseModel

from f2pipe_api import (
    admin,
    bulk,
    bulk_routes,
    certificates,
    console,
    controllers,
    decode,
    deps,
    device_types,
    layout,
    telemetry,
    templates,
)
from f2pipe_api.commands import router as commands_router
from f2pipe_api.dead_letters import router as dead_letters_router
from f2pipe_api.deps import DbDep, MetricsDep
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.ports import (
    SYSTEM_CLOCK,
    CertgenPort,
    Clock,
    CommandPort,
    DeadLetterPort,
    StreamPort,
)
from f2pipe_api.problems import PROBLEMS
from f2pipe_api.store import PostgresStore
from f2pipe_api.stream import router as stream_router
from f2pipe_shared.bodylimit import BodyLimit
from f2pipe_shared.problems import ProblemError, document_problems

MAX_BODY_BYTES = 64 * 1024
HEALTH_TIMEOUT_SECONDS = 2.0
# Served without a token: a load balancer's and Prometheus's, and the schema.
PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})

DESCRIPTION = """\
The f2pipe control plane: register and manage controllers, tokens, and read the audit log.
Every route but /healthz, /metrics and /openapi.json needs `Authorization: Bearer <token>`
(`f2pipe api-token create`); roles are viewer < operator < admin. Errors are RFC 9457 problem
details (`application/problem+json`) with a machine-readable `reason` (docs/api.md).
"""


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


def create_app(
    *,
    db: PostgresStore,
    metrics: ApiMetrics,
    clock: Clock = SYSTEM_CLOCK,
    max_body_bytes: int = MAX_BODY_BYTES,
    certgen: CertgenPort | None = None,
    dead_letters: DeadLetterPort | None = None,
    commands: CommandPort | None = None,
    command_timeout: float = 30.0,
    stream: StreamPort | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.open()
        if commands is not None:
            await commands.start()
        if stream is not None:
            await stream.start()
        try:
            yield
        finally:
            if stream is not None:
                await stream.stop()
            if commands is not None:
                await commands.stop()
            await db.close()
            if certgen is not None:
                await certgen.aclose()

    app = FastAPI(
        title="f2pipe api",
        version=version("f2pipe-api"),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(
        BodyLimit,
        max_bytes=max_body_bytes,
        problems=PROBLEMS,
        hint="requests to the api are small JSON objects (an import file: 32 MiB).",
        # The bulk import alone reads a file: its own, larger limit (bulk.MAX_BODY_BYTES).
        overrides={bulk_routes.IMPORT_PATH: bulk.MAX_BODY_BYTES},
    )
    app.add_middleware(console.SecurityHeaders)
    deps.attach(
        app,
        deps.Parts(
            db=db,
            metrics=metrics,
            clock=clock,
            certgen=certgen,
            dead_letters=dead_letters,
            commands=commands,
            command_timeout=command_timeout,
            stream=None if stream is None else stream.hub,
        ),
    )
    PROBLEMS.install_handlers(app)
    app.include_router(controllers.router)
    app.include_router(admin.router)
    app.include_router(bulk_routes.router)
    app.include_router(certificates.router)
    app.include_router(dead_letters_router)
    app.include_router(device_types.router)
    app.include_router(templates.router)
    app.include_router(layout.router)
    app.include_router(decode.router)
    app.include_router(commands_router)
    app.include_router(stream_router)
    app.include_router(telemetry.router)
    app.include_router(public)
    console.mount(app)
    document_problems(app, bearer=True)
    return app


public = APIRouter(tags=["public"])


@public.get(
    "/healthz",
    response_model=Health,
    responses=PROBLEMS.responses("unavailable"),
    summary="200 when the registry database answers, else 503 (no token)",
)
async def healthz(db: DbDep) -> Health:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            await db.ping()
    except Exception as exc:
        raise ProblemError("unavailable", f"registry database: {type(exc).__name__}") from exc
    return Health(status="ok", database="ok")


@public.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics (no token)",
)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)
