"""certgen's admin API, as the api calls it: list a controller's certificates, revoke one by
serial or all of a controller's. certgen stays the only holder of the CA key; the api holds
only CERTGEN_ADMIN_TOKEN (API_CERTGEN_ADMIN_TOKEN), sends it to certgen alone, over HTTPS
verified against certgen's CA (API_CERTGEN_CA_FILE).

Every failure is one of the port's two exceptions (ports.py): `CertgenRefused` for what the
operator asked wrongly (unknown serial or MAC, already revoked), `CertgenUnavailable` for
everything else. Neither carries certgen's body or the token: certgen's `reason` is the only
thing taken from a refusal, and only when it is one this client knows.
"""

from __future__ import annotations

import ssl
from datetime import datetime
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, Field, SecretStr, ValidationError

from f2pipe_api.ports import (
    CertgenRefused,
    CertgenUnavailable,
    CertificateStatus,
    RevocationReason,
)
from f2pipe_shared.settings import SettingsError

Kind = Literal["device", "service", "broker"]
# certgen's refusals an operator can act on, with the detail the api answers (never certgen's).
REFUSALS = {
    "unknown_serial": "certgen has no certificate with this serial.",
    "unknown_mac": "certgen knows no controller with this MAC, and it has no valid certificate.",
    "already_revoked": "The certificate is already revoked; nothing changed.",
}
# certgen answers these when the api's own settings are wrong: the operator of the api must act.
_SETTINGS_REFUSALS = {
    "missing_token": "certgen wants its admin token: set API_CERTGEN_ADMIN_TOKEN",
    "wrong_token": "certgen refused the admin token: check API_CERTGEN_ADMIN_TOKEN",
    "admin_disabled": "certgen's admin API is off (its CERTGEN_ADMIN_TOKEN is unset)",
}


class CertificateRecord(BaseModel):
    """One certificate certgen issued, as its registry records it."""

    serial: str = Field(
        description="X.509 serial, lowercase hex without leading zeros", examples=["1f3a9c"]
    )
    cn: str = Field(
        description="subject CN: f2-<mac> for a controller", examples=["f2-aabbccddee01"]
    )
    kind: Kind
    mac: str | None = Field(description="the controller's MAC (device certificates)")
    not_before: datetime
    not_after: datetime
    status: CertificateStatus
    revoked_at: datetime | None
    revocation_reason: str | None = Field(
        description="RFC 5280 reason, e.g. key_compromise", examples=["key_compromise"]
    )
    fingerprint_sha256: str = Field(description="SHA-256 of the DER certificate, hex")
    created_at: datetime

    def audited(self) -> dict[str, Any]:
        """What the audit log keeps of it (JSON-ready)."""
        return self.model_dump(mode="json", include=_AUDITED)


M = TypeVar("M", bound=BaseModel)
_AUDITED = {"serial", "cn", "status", "not_after", "revoked_at", "revocation_reason"}


class CertificatePage(BaseModel):
    items: list[CertificateRecord]
    total: int = Field(description="how many certificates match, over all pages")
    limit: int
    offset: int


class DeviceRevocation(BaseModel):
    mac: str
    cn: str
    revoked: list[CertificateRecord] = Field(
        description="the certificates this call revoked (empty: the controller had none valid)"
    )


class CertgenClient:
    """An `httpx.AsyncClient` on certgen's admin API; `transport` replaces the network (tests
    of the client alone)."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr,
        *,
        ca_file: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token.get_secret_value()}"},
            verify=_verify(ca_file),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            follow_redirects=False,  # the token goes to certgen's address and nowhere else
            trust_env=False,  # nor through a proxy an environment variable names
        )

    async def certificates(
        self, mac: str, *, status: CertificateStatus | None, limit: int, offset: int
    ) -> CertificatePage:
        params: dict[str, str | int] = {"mac": mac, "limit": limit, "offset": offset}
        if status is not None:
            params["status"] = status
        answer = await self._call("GET", "/v1/certificates", params=params)
        return _parsed(CertificatePage, answer)

    async def revoke_serial(self, serial: str, reason: RevocationReason) -> CertificateRecord:
        answer = await self._call(
            "POST", f"/v1/certificates/{serial}/revoke", json={"reason": reason}
        )
        return _parsed(CertificateRecord, answer)

    async def revoke_device(self, mac: str, reason: RevocationReason) -> DeviceRevocation:
        answer = await self._call("POST", f"/v1/devices/{mac}/revoke", json={"reason": reason})
        return _parsed(DeviceRevocation, answer)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            answer = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:  # connection, TLS, timeout
            raise CertgenUnavailable(f"certgen did not answer ({type(exc).__name__})") from None
        if answer.is_success:
            return answer
        reason = _reason(answer)
        if reason in REFUSALS and answer.status_code in (404, 409):
            raise CertgenRefused(reason, REFUSALS[reason])
        if reason in _SETTINGS_REFUSALS:
            raise CertgenUnavailable(_SETTINGS_REFUSALS[reason])
        raise CertgenUnavailable(f"certgen answered {answer.status_code}")


def _verify(ca_file: str | None) -> ssl.SSLContext | bool:
    """certgen's certificate is issued by its own CA: trust that CA (and check the name)."""
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(
            f"API_CERTGEN_CA_FILE={ca_file!r}: cannot be read as a CA certificate "
            f"({type(exc).__name__})"
        ) from None


def _reason(answer: httpx.Response) -> str | None:
    """certgen's machine `reason` of a problem, if the body is one (nothing else is read)."""
    try:
        body = answer.json()
    except ValueError:
        return None
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else None


def _parsed(model: type[M], answer: httpx.Response) -> M:
    try:
        return model.model_validate_json(answer.content)
    except ValidationError:
        raise CertgenUnavailable("certgen's answer does not match its schema") from None
