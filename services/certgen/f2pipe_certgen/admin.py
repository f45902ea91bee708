"""The admin API: list certificates, revoke, issue service certificates.

Every route needs `Authorization: Bearer <CERTGEN_ADMIN_TOKEN>`, compared in constant time.
No header: 401 with `WWW-Authenticate: Bearer`; a wrong token: 403. Without a configured
token (allowed only with F2PIPE_ENV=development) the admin API is off (403 admin_disabled)
rather than open: a development instance reachable from elsewhere should not revoke on anyone's
say-so.

A revocation commits in the registry first, then rewrites the CRL from every revoked
certificate there (crl.publish); the broker picks the CRL up as docs/security.md says.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from f2pipe_certgen import crl, problems
from f2pipe_certgen.ca import CertificateAuthority
from f2pipe_certgen.deps import CaDep, DbDep, MetricsDep, SettingsDep
from f2pipe_certgen.metrics import CertgenMetrics
from f2pipe_certgen.ports import (
    CertificateQuery,
    CertificateRow,
    CertificateStore,
    Kind,
    RevocationReason,
    Status,
)
from f2pipe_certgen.problems import FIELD_RULES, ProblemError
from f2pipe_shared.settings import CaSettings
from f2pipe_shared.topics import device_cn, mac_from_cn, normalize_mac

log = logging.getLogger(__name__)

SERVICE_PREFIX = "svc-"
_AUTH_REASONS = ("missing_token", "wrong_token", "admin_disabled")
# Module level: FastAPI resolves the dependency's (string) annotations in module globals.
_bearer = HTTPBearer(auto_error=False, scheme_name="adminToken", description="CERTGEN_ADMIN_TOKEN")


class CertificateRecord(BaseModel):
    """One certificate the CA issued, as the registry records it."""

    serial: str = Field(description="X.509 serial, lowercase hex without leading zeros")
    cn: str = Field(description="subject CN: f2-<mac> (device), svc-<name> (service), broker")
    kind: Kind
    mac: str | None = Field(description="the controller's MAC, for device certificates")
    not_before: datetime
    not_after: datetime
    status: Status
    revoked_at: datetime | None
    revocation_reason: str | None = Field(description="RFC 5280 reason, e.g. key_compromise")
    fingerprint_sha256: str = Field(description="SHA-256 of the DER certificate, hex")
    created_at: datetime

    @classmethod
    def of(cls, row: CertificateRow) -> CertificateRecord:
        mac = _mac_of(row.cn) if row.kind == "device" else None
        return cls.model_validate({**row.__dict__, "mac": mac})


class CertificatePage(BaseModel):
    items: list[CertificateRecord]
    total: int = Field(description="how many certificates match the filters in all")
    limit: int
    offset: int


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: RevocationReason = Field(
        description="RFC 5280 reason; key_compromise for a stolen or leaked key, "
        "cessation_of_operation for a decommissioned device"
    )


class DeviceRevocation(BaseModel):
    mac: str
    cn: str
    revoked: list[CertificateRecord] = Field(
        description="the certificates this call revoked (empty: the device had none valid)"
    )


class ServiceCertificateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$",
        max_length=31,
        description="service name; the certificate's CN is svc-<name> (bridge, operator, …)",
    )
    days: int | None = Field(
        None, ge=1, le=3650, description="lifetime in days (default: DEVICE_EXPIRY)"
    )


class ServiceCertificateResponse(BaseModel):
    serial: str
    cn: str
    certificate_pem: str
    ca_certificate_pem: str
    not_after: datetime
    private_key_pem: str = Field(description="the service's private key: returned once, never kept")


@dataclass(frozen=True)
class Admin:
    ca: CertificateAuthority
    db: CertificateStore
    metrics: CertgenMetrics
    service_days: int

    async def page(
        self,
        *,
        mac: str | None,
        status: Status | None,
        kind: Kind | None,
        limit: int,
        offset: int,
    ) -> CertificatePage:
        cn = None if mac is None else device_cn(_mac(mac))
        async with self.db.transaction() as tx:
            rows, total = await tx.list_certificates(
                CertificateQuery(cn, status, kind, limit, offset)
            )
        items = [CertificateRecord.of(row) for row in rows]
        return CertificatePage(items=items, total=total, limit=limit, offset=offset)

    async def revoke_serial(self, serial: str, reason: RevocationReason) -> CertificateRecord:
        serial = format(int(serial, 16), "x")  # the registry's spelling: no leading zeros
        async with self.db.transaction() as tx:
            row, revoked = await tx.revoke_serial(serial, reason)
        if row is None:
            raise ProblemError(
                "unknown_serial",
                f"No certificate has serial {serial}.",
                context={"serial": serial},
            )
        if not revoked:
            raise ProblemError(
                "already_revoked",
                f"Certificate {serial} was revoked at {row.revoked_at} "
                f"({row.revocation_reason}); nothing changed.",
                context={"serial": serial, "cn": row.cn},
            )
        await self._published([row], reason)
        return CertificateRecord.of(row)

    async def revoke_device(self, raw_mac: str, reason: RevocationReason) -> DeviceRevocation:
        mac = _mac(raw_mac)
        cn = device_cn(mac)
        async with self.db.transaction() as tx:
            # Same lock as enrolment: a revocation cannot interleave with a re-enrolment.
            await tx.lock_mac(mac)
            controller = await tx.find_controller(mac)
            rows = await tx.revoke_valid_of_cn(cn, reason)
        if controller is None and not rows:
            raise ProblemError(
                "unknown_mac",
                f"No controller with MAC {mac} is registered.",
                context={"mac": mac, "cn": cn},
            )
        if rows:
            await self._published(rows, reason)
        else:
            log.info("no valid certificate to revoke", extra={"mac": mac, "cn": cn})
        return DeviceRevocation(mac=mac, cn=cn, revoked=[CertificateRecord.of(r) for r in rows])

    async def issue_service(self, request: ServiceCertificateRequest) -> ServiceCertificateResponse:
        cn = SERVICE_PREFIX + request.name
        days = request.days or self.service_days
        cert, key_pem = await asyncio.to_thread(
            self.ca.issue_key_and_certificate, cn, days=days, kind="service"
        )
        async with self.db.transaction() as tx:
            await tx.record_certificate(cert, None)
        self.metrics.service_certificates.inc()
        log.info("service certificate issued", extra={"cn": cn, "serial": cert.serial})
        return ServiceCertificateResponse(
            serial=cert.serial,
            cn=cn,
            certificate_pem=cert.pem,
            ca_certificate_pem=self.ca.certificate_pem,
            not_after=cert.not_after,
            private_key_pem=key_pem,
        )

    async def _published(self, rows: list[CertificateRow], reason: RevocationReason) -> None:
        self.metrics.revocations.labels(reason=reason).inc(len(rows))
        for row in rows:
            log.info(
                "certificate revoked",
                extra={"serial": row.serial, "cn": row.cn, "reason": reason},
            )
        await crl.publish(self.db, self.ca)


def admin_token(settings: CaSettings) -> SecretStr | None:
    """CERTGEN_ADMIN_TOKEN, with an empty value meaning unset."""
    token = settings.certgen_admin_token
    return token if token is not None and token.get_secret_value() else None


async def require_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: SettingsDep,
) -> None:
    """The dependency that guards every admin route."""
    token = admin_token(settings.ca)
    if token is None:
        raise ProblemError(
            "admin_disabled",
            "CERTGEN_ADMIN_TOKEN is not set on this certgen, so its admin API is off.",
        )
    if credentials is None:
        raise ProblemError(
            "missing_token",
            "Send 'Authorization: Bearer <CERTGEN_ADMIN_TOKEN>'.",
            headers={"WWW-Authenticate": 'Bearer realm="certgen"'},
        )
    if not hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise ProblemError(
            "wrong_token",
            "The bearer token is not this certgen's CERTGEN_ADMIN_TOKEN.",
            headers={"WWW-Authenticate": 'Bearer realm="certgen", error="invalid_token"'},
        )


def get_admin(ca: CaDep, db: DbDep, metrics: MetricsDep, settings: SettingsDep) -> Admin:
    return Admin(ca=ca, db=db, metrics=metrics, service_days=settings.ca.device_expiry)


AdminDep = Annotated[Admin, Depends(get_admin)]

router = APIRouter(prefix="/v1", tags=["admin"], dependencies=[Depends(require_token)])


@router.get(
    "/certificates",
    response_model=CertificatePage,
    summary="List issued certificates, newest first",
    responses=problems.responses(*_AUTH_REASONS, "invalid_mac", "invalid_request"),
)
async def list_certificates(
    *,
    mac: Annotated[str | None, Query(description="only this controller's")] = None,
    status: Annotated[Status | None, Query()] = None,
    kind: Annotated[Kind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    admin: AdminDep,
) -> CertificatePage:
    return await admin.page(mac=mac, status=status, kind=kind, limit=limit, offset=offset)


@router.post(
    "/certificates/{serial}/revoke",
    response_model=CertificateRecord,
    summary="Revoke one certificate by serial",
    responses=problems.responses(
        *_AUTH_REASONS, "unknown_serial", "already_revoked", "invalid_request"
    ),
)
async def revoke_certificate(
    serial: Annotated[str, Path(pattern=r"^[0-9a-fA-F]{1,40}$", description="hex serial")],
    body: RevokeRequest,
    admin: AdminDep,
) -> CertificateRecord:
    return await admin.revoke_serial(serial, body.reason)


@router.post(
    "/devices/{mac}/revoke",
    response_model=DeviceRevocation,
    summary="Revoke every valid certificate of a controller",
    responses=problems.responses(*_AUTH_REASONS, "unknown_mac", "invalid_mac", "invalid_request"),
)
async def revoke_device(mac: str, body: RevokeRequest, admin: AdminDep) -> DeviceRevocation:
    return await admin.revoke_device(mac, body.reason)


@router.post(
    "/service-certificates",
    status_code=201,
    response_model=ServiceCertificateResponse,
    summary="Issue a service client certificate (CN svc-<name>) with a new key",
    responses=problems.responses(*_AUTH_REASONS, "invalid_request"),
)
async def issue_service_certificate(
    body: ServiceCertificateRequest, response: Response, admin: AdminDep
) -> ServiceCertificateResponse:
    response.headers["Cache-Control"] = "no-store"  # it carries a private key
    return await admin.issue_service(body)


def _mac(raw: str) -> str:
    try:
        return normalize_mac(raw)
    except ValueError:
        # The value is not repeated: a path or query parameter may carry anything.
        raise ProblemError("invalid_mac", f"mac: {FIELD_RULES['mac']}.") from None


def _mac_of(cn: str) -> str | None:
    try:
        return mac_from_cn(cn)
    except ValueError:
        return None
