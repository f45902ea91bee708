"""`POST /v1/enroll`: a controller proves it is ours and gets its client certificate.

1. authenticate: the client's address (lockout.client_source) is not throttled, and the claim
   code matches the MAC's stored hash. An unknown MAC, a controller without a code and a
   wrong code are refused alike (403 `enrolment_refused`, the same body, the same scrypt
   work) and charged to the address and the MAC (lockout.py); the log line and the metrics
   say which it was;
2. issue: sign the device's CSR (CN must be f2-<mac>, key acceptable) or, without a CSR,
   generate the key pair and return it once;
3. record (one transaction, holding the MAC's lock): the new certificate, and the MAC's
   earlier valid device certificates revoked as `superseded`, then the CRL rewritten.

Re-enrolment supersedes: a device has one valid certificate, so a reset or stolen device's
old key stops working at the broker once its CRL is reloaded. The claim code stays usable for
re-enrolment (e.g. after a factory reset); the throttle bounds guessing, and never refuses
the right code to an address that is not throttled itself.

The registry is a `ports.CertificateStore` and the throttle's time an injected clock, so the
decisions here are unit-tested with fakes. Nothing here logs or stores the claim code or a
private key.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field

from f2pipe_certgen import crl, problems
from f2pipe_certgen.ca import CertificateAuthority, CsrError, IssuedCertificate
from f2pipe_certgen.deps import (
    CaDep,
    ClaimCheckDep,
    DbDep,
    MetricsDep,
    SettingsDep,
    ThrottleDep,
)
from f2pipe_certgen.lockout import ClaimCheck, Throttle, Throttled, client_source
from f2pipe_certgen.metrics import CertgenMetrics
from f2pipe_certgen.ports import CertificateStore, Controller
from f2pipe_certgen.problems import ProblemError
from f2pipe_certgen.settings import CertgenSettings
from f2pipe_shared import certificates
from f2pipe_shared.certificates import EnrollResponse
from f2pipe_shared.topics import device_cn

log = logging.getLogger(__name__)

PATH = "/v1/enroll"
# What `normalize_mac` accepts: 12 hex digits, or six pairs all separated by ':' or all by '-'.
# In the schema so that a schema-valid request is one certgen accepts.
_HEX2 = "[0-9A-Fa-f]{2}"
MAC_PATTERN = f"^(?:[0-9A-Fa-f]{{12}}|{_HEX2}(?::{_HEX2}){{5}}|{_HEX2}(?:-{_HEX2}){{5}})$"
# One detail for every refused claim: it names neither the MAC nor which check failed.
REFUSED = (
    "The MAC is not registered or the claim code does not match it (case and dashes do not "
    "matter); check both, or ask the operator. Repeated failures from one address are "
    "throttled."
)


class EnrollRequest(certificates.EnrollRequest):
    """The shared request, with the MAC's pattern in the schema (/openapi.json)."""

    mac: str = Field(
        pattern=MAC_PATTERN,
        description="the controller's eth0 MAC: 12 hex digits, optionally in pairs separated "
        "by ':' or '-'",
        examples=["aa:bb:cc:dd:ee:01"],
    )


@dataclass(frozen=True)
class Enrolment:
    ca: CertificateAuthority
    db: CertificateStore
    metrics: CertgenMetrics
    throttle: Throttle
    claims: ClaimCheck
    device_days: int

    async def enrol(self, request: certificates.EnrollRequest, source: str) -> EnrollResponse:
        controller = await self.authenticate(request.mac, request.claim_code, source)
        cert, key_pem = await self.issue(request)
        superseded = await self.record(cert, controller)
        if superseded:
            self.metrics.revocations.labels(reason="superseded").inc(superseded)
            await crl.publish(self.db, self.ca)
        flow = "csr" if key_pem is None else "generated"
        self.metrics.enrolments.labels(flow=flow).inc()
        log.info(
            "device enrolled",
            extra={
                "mac": controller.mac,
                "cn": cert.cn,
                "serial": cert.serial,
                "flow": flow,
                "not_after": cert.not_after.isoformat(),
                "superseded": superseded,
            },
        )
        return EnrollResponse(
            serial=cert.serial,
            cn=cert.cn,
            certificate_pem=cert.pem,
            ca_certificate_pem=self.ca.certificate_pem,
            not_after=cert.not_after,
            private_key_pem=key_pem,
        )

    async def authenticate(self, mac: str, claim_code: str, source: str) -> Controller:
        """The controller, when `source` may try and the code is its code."""
        throttled = self.throttle.check(source)
        if throttled is not None:
            raise _throttled(throttled)
        async with self.db.transaction() as tx:
            controller = await tx.find_controller(mac)
        stored = None if controller is None else controller.claim_code_hash
        # Checked whether or not there is a hash to check against: same work, same time.
        if await self.claims.matches(claim_code, stored) and controller is not None:
            return controller
        if controller is None:
            cause = "unknown_mac"
        else:
            cause = "no_claim_code" if stored is None else "wrong_claim_code"
        attacked = self.throttle.failed(source, mac)
        context = {"mac_attacked": True} if attacked else {}
        raise ProblemError("enrolment_refused", REFUSED, cause=cause, context=context)

    async def issue(
        self, request: certificates.EnrollRequest
    ) -> tuple[IssuedCertificate, str | None]:
        cn = device_cn(request.mac)
        try:
            if request.csr_pem is None:
                return await asyncio.to_thread(
                    self.ca.issue_key_and_certificate, cn, days=self.device_days, kind="device"
                )
            cert = await asyncio.to_thread(
                self.ca.sign_csr, request.csr_pem, cn=cn, days=self.device_days, kind="device"
            )
        except CsrError as exc:
            # The CA's message says what is wrong and what to use instead.
            raise ProblemError(exc.reason, f"{str(exc)[:1].upper()}{str(exc)[1:]}.") from exc
        return cert, None

    async def record(self, cert: IssuedCertificate, controller: Controller) -> int:
        """Record the certificate, superseding the device's others; return how many."""
        async with self.db.transaction() as tx:
            # Two enrolments of one MAC at once: the later one supersedes the earlier.
            await tx.lock_mac(controller.mac)
            superseded = await tx.revoke_valid_of_cn(cert.cn, "superseded")
            await tx.record_certificate(cert, controller.id)
        return len(superseded)


def _throttled(throttled: Throttled) -> ProblemError:
    return ProblemError(
        "locked_out",
        f"Too many failed enrolments from this address; retry after {throttled.retry_after} s. "
        "A device with the right claim code is never refused for its MAC's sake.",
        headers={"Retry-After": str(throttled.retry_after)},
    )


def get_enrolment(
    *,
    ca: CaDep,
    db: DbDep,
    metrics: MetricsDep,
    throttle: ThrottleDep,
    claims: ClaimCheckDep,
    settings: SettingsDep,
) -> Enrolment:
    return Enrolment(
        ca=ca,
        db=db,
        metrics=metrics,
        throttle=throttle,
        claims=claims,
        device_days=settings.ca.device_expiry,
    )


def source_of(request: Request, settings: CertgenSettings) -> str:
    """The throttle's key for this request's client (see lockout.client_source)."""
    return client_source(
        request.client.host if request.client else None,
        request.headers.getlist("x-forwarded-for"),
        trusted_proxies=settings.trusted_proxy_networks,
        ipv6_prefix=settings.certgen_ipv6_prefix,
    )


EnrolmentDep = Annotated[Enrolment, Depends(get_enrolment)]

router = APIRouter(tags=["enrolment"])


@router.post(
    PATH,
    response_model=EnrollResponse,
    summary="Enrol a controller: get its client certificate",
    description=(
        "Send the controller's MAC, its claim code and a PEM CSR whose subject is "
        "`CN=f2-<mac>` (EC P-256/P-384 or RSA >= 2048). Without `csr_pem`, certgen "
        "generates the key pair and returns `private_key_pem` once; it keeps no copy. "
        "Enrolling again revokes the controller's previous certificate (`superseded`)."
    ),
    responses=problems.responses(
        "body_too_large",
        "invalid_json",
        "invalid_request",
        "invalid_mac",
        "bad_csr",
        "wrong_cn",
        "weak_key",
        "enrolment_refused",
        "locked_out",
        "unavailable",
    ),
)
async def enroll(
    body: EnrollRequest,
    request: Request,
    response: Response,
    enrolment: EnrolmentDep,
    settings: SettingsDep,
) -> EnrollResponse:
    # The answer may hold a private key: no cache anywhere may keep it.
    response.headers["Cache-Control"] = "no-store"
    source = source_of(request, settings.certgen)
    try:
        return await enrolment.enrol(body, source)
    except ProblemError as exc:
        enrolment.metrics.enrolment_failures.labels(reason=exc.cause).inc()
        exc.context.update(mac=body.mac, cn=device_cn(body.mac), source=source)
        raise
