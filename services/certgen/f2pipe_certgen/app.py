"""The certgen HTTP API: `create_app()` puts the parts `main.build()` made where the handlers'
dependencies (deps.py) find them, and includes the routes.

Routes: enrolment (enrolment.py), admin (admin.py), and the public ones here: the CA
certificate, the CRL, health and metrics. Errors are problem details (problems.py). Request
bodies are limited (limits.py). The schema is served at /openapi.json; there is no docs UI.

While it runs, the app opens the registry's pool and rewrites the CRL from the registry at
start-up and then every `crl_refresh` seconds (crl.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Response
from pydantic import BaseModel

from f2pipe_certgen import admin, deps, enrolment, problems
from f2pipe_certgen.ca import CaError, CertificateAuthority
from f2pipe_certgen.crl import REFRESH_SECONDS, keep_fresh
from f2pipe_certgen.deps import CaDep, DbDep, MetricsDep
from f2pipe_certgen.limits import MAX_BODY_BYTES, BodyLimit
from f2pipe_certgen.lockout import ClaimCheck, Throttle, ThrottlePolicy
from f2pipe_certgen.metrics import CertgenMetrics
from f2pipe_certgen.ports import CertificateStore, Clock
from f2pipe_certgen.problems import ProblemError
from f2pipe_certgen.settings import Settings
from f2pipe_shared.problems import document_problems

log = logging.getLogger(__name__)

PEM_MEDIA_TYPE = "application/x-pem-file"
HEALTH_TIMEOUT_SECONDS = 2.0

DESCRIPTION = """\
The f2pipe certificate authority. Controllers enrol with their MAC, claim code and a CSR
(`POST /v1/enroll`) and receive a client certificate with CN `f2-<mac>` for the MQTT broker.
Operators list and revoke certificates and issue service certificates with the admin token.
Errors are RFC 9457 problem details (`application/problem+json`) with a machine-readable
`reason`; docs/certgen.md says what to do about each.
"""


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    ca: Literal["ok"]


def create_app(
    ca: CertificateAuthority,
    *,
    settings: Settings,
    db: CertificateStore,
    metrics: CertgenMetrics,
    throttle: ThrottlePolicy,
    clock: Clock,
    claims: ClaimCheck | None = None,
    crl_refresh: float = REFRESH_SECONDS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The app around these parts; `claims` defaults to scrypt with a fresh dummy hash."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.open()
        refresher = asyncio.create_task(keep_fresh(db, ca, crl_refresh))
        try:
            yield
        finally:
            refresher.cancel()
            await db.close()

    app = FastAPI(
        title="f2pipe certgen",
        version=version("f2pipe-certgen"),
        description=DESCRIPTION,
        lifespan=lifespan,
        # The schema stays at /openapi.json; the UI pages would load their scripts from a CDN
        # (empty offline, and a third party's code next to the admin token).
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    parts = deps.Parts(
        settings=settings,
        ca=ca,
        db=db,
        metrics=metrics,
        throttle=Throttle(throttle, clock),
        claims=claims or ClaimCheck(),
    )
    deps.attach(app, parts)

    def count_invalid_enrolment(path: str, reason: str) -> None:
        if path == enrolment.PATH:
            metrics.enrolment_failures.labels(reason=reason).inc()

    problems.install_handlers(app, on_invalid=count_invalid_enrolment)
    app.include_router(enrolment.router)
    app.include_router(admin.router)
    app.include_router(public)
    document_problems(app)
    return app


PEM: dict[int | str, dict[str, Any]] = {
    200: {"content": {PEM_MEDIA_TYPE: {"schema": {"type": "string"}}}}
}

public = APIRouter(tags=["public"])


@public.get(
    "/v1/ca.pem",
    response_class=Response,
    responses=PEM,
    summary="The CA certificate (PEM): the trust anchor for the broker and clients",
)
async def ca_certificate(ca: CaDep) -> Response:
    return Response(ca.certificate_pem, media_type=PEM_MEDIA_TYPE)


@public.get(
    "/v1/crl.pem",
    response_class=Response,
    responses={**PEM, **problems.responses("unavailable")},
    summary="The certificate revocation list (PEM)",
)
async def crl(ca: CaDep) -> Response:
    try:
        text = await asyncio.to_thread(ca.crl_pem)
    except (CaError, OSError) as exc:
        log.error("CRL unreadable", extra={"error": str(exc)})
        raise ProblemError("unavailable", "The CRL cannot be read; retry later.") from exc
    return Response(text, media_type=PEM_MEDIA_TYPE)


@public.get(
    "/healthz",
    response_model=Health,
    responses=problems.responses("unavailable"),
    summary="200 when the registry database answers and the CA is loaded, else 503",
)
async def healthz(ca: CaDep, db: DbDep) -> Health:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            await db.ping()
    except Exception as exc:
        raise ProblemError("unavailable", f"registry database: {type(exc).__name__}") from exc
    try:
        if not ca.certificate_pem or not await asyncio.to_thread(ca.crl_pem):
            raise CaError("empty CA certificate or CRL")
    except (CaError, OSError) as exc:
        raise ProblemError("unavailable", f"CA: {exc}") from exc
    return Health(status="ok", database="ok", ca="ok")


@public.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics",
)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)
