"""The certgen HTTP API: `create_app()` wires the CA, the registry and the routes together.

Routes: enrolment (enrolment.py), admin (admin.py), and the public ones here: the CA
certificate, the CRL, health and metrics. Errors are problem details (problems.py).

While it runs, the app rewrites the CRL from the registry at start-up and then every
`crl_refresh` seconds: a CRL past its nextUpdate makes the broker refuse *every* client, so it
must be renewed even when nobody revokes anything, and the rewrite also repairs a CRL that
missed a revocation (a crash between commit and write, another replica's write).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any, Literal

from fastapi import FastAPI, Response
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, SecretStr

from f2pipe_certgen import admin, enrolment, problems, store
from f2pipe_certgen.ca import CaError, CertificateAuthority
from f2pipe_certgen.lockout import LockoutPolicy
from f2pipe_certgen.metrics import Metrics
from f2pipe_certgen.problems import ProblemError
from f2pipe_certgen.store import Store
from f2pipe_shared.settings import CaSettings

log = logging.getLogger(__name__)

PEM_MEDIA_TYPE = "application/x-pem-file"
CRL_REFRESH_SECONDS = 3600.0
CRL_RETRY_SECONDS = 30.0
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


def admin_token(settings: CaSettings) -> SecretStr | None:
    """CERTGEN_ADMIN_TOKEN, with an empty value meaning unset."""
    token = settings.certgen_admin_token
    return token if token is not None and token.get_secret_value() else None


def create_app(
    ca: CertificateAuthority,
    settings: CaSettings,
    conninfo: str,
    *,
    lockout: LockoutPolicy | None = None,
    crl_refresh: float = CRL_REFRESH_SECONDS,
) -> FastAPI:
    registry = Store(conninfo)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.open()
        refresher = asyncio.create_task(_keep_crl_fresh(registry, ca, crl_refresh))
        try:
            yield
        finally:
            refresher.cancel()
            await registry.close()

    app = FastAPI(
        title="f2pipe certgen",
        version=version("f2pipe-certgen"),
        description=DESCRIPTION,
        lifespan=lifespan,
    )

    def count_invalid_enrolment(path: str, reason: str) -> None:
        if path == enrolment.PATH:
            metrics.enrolment_failures.labels(reason=reason).inc()

    problems.install_handlers(app, on_invalid=count_invalid_enrolment)
    enrol = enrolment.Enrolment(
        ca=ca,
        registry=registry,
        metrics=metrics,
        lockout=lockout or LockoutPolicy(),
        device_days=settings.device_expiry,
    )
    app.include_router(enrolment.router(enrol))
    administration = admin.Admin(
        ca=ca, registry=registry, metrics=metrics, service_days=settings.device_expiry
    )
    app.include_router(admin.router(administration, admin_token(settings)))
    _add_public_routes(app, ca, registry, metrics)
    _document_problems(app)
    return app


def _add_public_routes(
    app: FastAPI, ca: CertificateAuthority, registry: Store, metrics: Metrics
) -> None:
    pem: dict[int | str, dict[str, Any]] = {
        200: {"content": {PEM_MEDIA_TYPE: {"schema": {"type": "string"}}}}
    }

    @app.get(
        "/v1/ca.pem",
        response_class=Response,
        responses=pem,
        tags=["public"],
        summary="The CA certificate (PEM): the trust anchor for the broker and clients",
    )
    async def ca_certificate() -> Response:
        return Response(ca.certificate_pem, media_type=PEM_MEDIA_TYPE)

    @app.get(
        "/v1/crl.pem",
        response_class=Response,
        responses={**pem, **problems.responses("unavailable")},
        tags=["public"],
        summary="The certificate revocation list (PEM)",
    )
    async def crl() -> Response:
        try:
            text = await asyncio.to_thread(ca.crl_pem)
        except (CaError, OSError) as exc:
            log.error("CRL unreadable", extra={"error": str(exc)})
            raise ProblemError("unavailable", "The CRL cannot be read; retry later.") from exc
        return Response(text, media_type=PEM_MEDIA_TYPE)

    @app.get(
        "/healthz",
        response_model=Health,
        responses=problems.responses("unavailable"),
        tags=["public"],
        summary="200 when the registry database answers and the CA is loaded, else 503",
    )
    async def healthz() -> Health:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
                await registry.ping()
        except Exception as exc:
            raise ProblemError("unavailable", f"registry database: {type(exc).__name__}") from exc
        try:
            if not ca.certificate_pem or not await asyncio.to_thread(ca.crl_pem):
                raise CaError("empty CA certificate or CRL")
        except (CaError, OSError) as exc:
            raise ProblemError("unavailable", f"CA: {exc}") from exc
        return Health(status="ok", database="ok", ca="ok")

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        tags=["public"],
        summary="Prometheus metrics",
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)


def _document_problems(app: FastAPI) -> None:
    """Generate the OpenAPI schema with the Problem model the `responses=` refer to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            problems.add_problem_schemas(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _keep_crl_fresh(registry: Store, ca: CertificateAuthority, interval: float) -> None:
    while True:
        try:
            revoked = await store.publish_crl(registry, ca)
        except Exception as exc:  # keep trying: the next attempt may find the database back
            log.warning("CRL not rewritten; retrying", extra={"error": repr(exc)})
            await asyncio.sleep(min(interval, CRL_RETRY_SECONDS))
            continue
        log.info("CRL rewritten", extra={"revoked": revoked})
        await asyncio.sleep(interval)
