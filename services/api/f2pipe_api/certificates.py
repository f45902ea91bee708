"""/v1/controllers/{mac}/certificates: a controller's certificates and their status, and
revocation, all through certgen's admin API (certgen_client.py): certgen stays the only
holder of the CA key, and its CRL the only list of what is revoked.

Each certificate revoked writes one audit row (`certificate.revoke`, target
`controller:<mac>`, before and after). The api holds its registry connection, in the audit
row's transaction, before it asks certgen: a revocation is not made when its audit row could
not be written (only a failed commit after certgen's answer can still separate them, and the
revocation is then in certgen's log).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from f2pipe_api.certgen_client import CertificatePage, CertificateRecord, DeviceRevocation
from f2pipe_api.controllers import MacPath
from f2pipe_api.deps import AUTH_REASONS, Admin, CertgenDep, DbDep, MetricsDep, Offset, Viewer
from f2pipe_api.ports import (
    CertgenPort,
    CertgenRefused,
    CertgenUnavailable,
    CertificateStatus,
    RevocationReason,
)
from f2pipe_api.problems import PROBLEMS
from f2pipe_api.store import audit
from f2pipe_shared.problems import ProblemError
from f2pipe_shared.topics import normalize_mac

router = APIRouter(prefix="/v1/controllers/{mac}/certificates", tags=["certificates"])

SerialPath = Annotated[
    str,
    Path(pattern=r"^[0-9a-fA-F]{1,40}$", description="the X.509 serial, hex", examples=["1f3a9c"]),
]
# certgen answers 500 certificates a page at most; a controller has a handful.
_PAGE = 500
_MAX_PAGES = 20
ACTION = "certificate.revoke"


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: RevocationReason = Field(
        description="RFC 5280 reason: key_compromise for a stolen or leaked key, "
        "cessation_of_operation for a decommissioned controller",
        examples=["key_compromise"],
    )


def _configured(certgen: CertgenPort | None) -> CertgenPort:
    if certgen is None:
        raise ProblemError(
            "certgen_unavailable",
            "The api is not configured for certgen (API_CERTGEN_URL, API_CERTGEN_ADMIN_TOKEN).",
        )
    return certgen


@contextmanager
def _answered(mac: str, serial: str | None = None) -> Iterator[None]:
    """certgen's failures as the api's problems."""
    context = {"mac": mac} if serial is None else {"mac": mac, "serial": serial}
    try:
        yield
    except CertgenRefused as exc:
        raise ProblemError(exc.reason, exc.detail, context=context) from None
    except CertgenUnavailable as exc:
        raise ProblemError(
            "certgen_unavailable", f"{exc}; retry later.", headers={"Retry-After": "5"},
            context=context,
        ) from None  # fmt: skip


async def _find(certgen: CertgenPort, mac: str, serial: str) -> CertificateRecord:
    """The controller's certificate with this serial: one of another controller is not it."""
    for page in range(_MAX_PAGES):
        found = await certgen.certificates(mac, status=None, limit=_PAGE, offset=page * _PAGE)
        for record in found.items:
            if record.serial == serial:
                return record
        if (page + 1) * _PAGE >= found.total:
            break
    raise CertgenRefused("unknown_serial", "The controller has no certificate with this serial.")


@router.get(
    "",
    response_model=CertificatePage,
    responses=PROBLEMS.responses(
        *AUTH_REASONS, "invalid_mac", "invalid_request", "certgen_unavailable"
    ),
    summary="A controller's certificates, newest first, with their status (viewer)",
)
async def list_certificates(
    caller: Viewer,
    certgen: CertgenDep,
    mac: MacPath,
    *,
    status: Annotated[CertificateStatus | None, Query(description="only valid or revoked")] = None,
    limit: Annotated[int, Query(ge=1, le=_PAGE)] = 100,
    offset: Offset = 0,
) -> CertificatePage:
    client, mac = _configured(certgen), normalize_mac(mac)
    with _answered(mac):
        return await client.certificates(mac, status=status, limit=limit, offset=offset)


@router.post(
    "/revoke",
    response_model=DeviceRevocation,
    responses=PROBLEMS.responses(
        *AUTH_REASONS, "unknown_mac", "invalid_mac", "invalid_request", "certgen_unavailable"
    ),
    summary="Revoke every valid certificate of a controller (admin)",
)
async def revoke_all(
    *,
    caller: Admin,
    db: DbDep,
    metrics: MetricsDep,
    certgen: CertgenDep,
    mac: MacPath,
    body: Revocation,
) -> DeviceRevocation:
    client, mac = _configured(certgen), normalize_mac(mac)
    with _answered(mac):
        async with db.transaction() as conn:
            done = await client.revoke_device(mac, body.reason)
            for record in done.revoked:
                after = record.audited()
                before = {**after, "status": "valid", "revoked_at": None, "revocation_reason": None}
                await audit(conn, caller.name, ACTION, f"controller:{mac}", before=before,
                            after=after)  # fmt: skip
    metrics.changes.labels(action=ACTION).inc(len(done.revoked))
    return done


@router.post(
    "/{serial}/revoke",
    response_model=CertificateRecord,
    responses=PROBLEMS.responses(
        *AUTH_REASONS,
        "unknown_serial",
        "already_revoked",
        "invalid_mac",
        "invalid_request",
        "certgen_unavailable",
    ),
    summary="Revoke one certificate of a controller (admin)",
)
async def revoke_one(
    *,
    caller: Admin,
    db: DbDep,
    metrics: MetricsDep,
    certgen: CertgenDep,
    mac: MacPath,
    serial: SerialPath,
    body: Revocation,
) -> CertificateRecord:
    client, mac = _configured(certgen), normalize_mac(mac)
    serial = format(int(serial, 16), "x")  # certgen's spelling: no leading zeros
    with _answered(mac, serial):
        before = await _find(client, mac, serial)
        async with db.transaction() as conn:
            after = await client.revoke_serial(serial, body.reason)
            await audit(conn, caller.name, ACTION, f"controller:{mac}",
                        before=before.audited(), after=after.audited())  # fmt: skip
    metrics.changes.labels(action=ACTION).inc()
    return after
