"""`POST /v1/enroll`: a controller proves it is ours and gets its client certificate.

1. authenticate (one transaction, holding the MAC's lock): the MAC is registered, not
   locked out, and the claim code matches its stored hash; a wrong code is counted and may
   lock the MAC (lockout.py);
2. issue: sign the device's CSR (CN must be f2-<mac>, key acceptable) or, without a CSR,
   generate the key pair and return it once;
3. record (second transaction): the new certificate, and the MAC's earlier valid device
   certificates revoked as `superseded`, then the CRL rewritten.

Re-enrolment supersedes: a device has one valid certificate, so a reset or stolen device's
old key stops working at the broker once its CRL is reloaded. The claim code stays usable for
re-enrolment (e.g. after a factory reset); the lockout bounds guessing.

The registry is a `ports.CertificateStore` and the lockout's time an injected clock, so the
decisions here are unit-tested with fakes. Nothing here logs or stores the claim code or a
private key.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import Field

from f2pipe_certgen import crl, problems
from f2pipe_certgen.ca import CertificateAuthority, CsrError, IssuedCertificate
from f2pipe_certgen.deps import CaDep, DbDep, LockoutsDep, MetricsDep, SettingsDep
from f2pipe_certgen.lockout import Lockout, Lockouts
from f2pipe_certgen.metrics import CertgenMetrics
from f2pipe_certgen.ports import CertificateStore, Controller, StoreTransaction
from f2pipe_certgen.problems import ProblemError
from f2pipe_shared import certificates
from f2pipe_shared.certificates import EnrollResponse
from f2pipe_shared.claimcodes import verify_claim_code
from f2pipe_shared.topics import device_cn

log = logging.getLogger(__name__)

PATH = "/v1/enroll"
# What `normalize_mac` accepts: 12 hex digits, or six pairs all separated by ':' or all by '-'.
# In the schema so that a schema-valid request is one certgen accepts.
_HEX2 = "[0-9A-Fa-f]{2}"
MAC_PATTERN = f"^(?:[0-9A-Fa-f]{{12}}|{_HEX2}(?::{_HEX2}){{5}}|{_HEX2}(?:-{_HEX2}){{5}})$"


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
    lockouts: Lockouts
    device_days: int

    async def enrol(self, request: certificates.EnrollRequest) -> EnrollResponse:
        controller = await self.authenticate(request.mac, request.claim_code)
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

    async def authenticate(self, mac: str, claim_code: str) -> Controller:
        async with self.db.transaction() as tx:
            await tx.lock_mac(mac)
            outcome = await self._check_claim(tx, mac, claim_code)
        # Raised only now, after the block committed: a wrong code's record must persist.
        if isinstance(outcome, ProblemError):
            raise outcome
        return outcome

    async def _check_claim(
        self, tx: StoreTransaction, mac: str, claim_code: str
    ) -> Controller | ProblemError:
        controller = await tx.find_controller(mac)
        if controller is None:
            return ProblemError(
                "unknown_mac",
                f"No controller with MAC {mac} is registered; check the MAC (eth0) or ask the "
                "operator to register the controller.",
            )
        locked = await self.lockouts.current(tx, mac)
        if locked is not None:
            return _locked_out(locked)
        if controller.claim_code_hash is None:
            return ProblemError(
                "wrong_claim_code",
                "This controller has no claim code; ask the operator to set one.",
            )
        # scrypt takes ~30 ms of CPU: off the event loop.
        if await asyncio.to_thread(verify_claim_code, claim_code, controller.claim_code_hash):
            await self.lockouts.clear(tx, mac)
            return controller
        locked = await self.lockouts.record_failure(tx, mac)
        detail = "The claim code does not match this controller's; check it (case and dashes "
        detail += "do not matter)."
        if locked is not None:
            detail += f" Too many wrong codes: enrolment is locked for {locked.retry_after} s."
        return ProblemError("wrong_claim_code", detail)

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


def _locked_out(locked: Lockout) -> ProblemError:
    return ProblemError(
        "locked_out",
        f"Too many wrong claim codes for this MAC; enrolment is refused, even with the right "
        f"code, until {locked.until.isoformat(timespec='seconds')} (retry after "
        f"{locked.retry_after} s).",
        headers={"Retry-After": str(locked.retry_after)},
    )


def get_enrolment(
    ca: CaDep, db: DbDep, metrics: MetricsDep, lockouts: LockoutsDep, settings: SettingsDep
) -> Enrolment:
    return Enrolment(
        ca=ca, db=db, metrics=metrics, lockouts=lockouts, device_days=settings.ca.device_expiry
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
        "unknown_mac",
        "wrong_claim_code",
        "locked_out",
        "unavailable",
    ),
)
async def enroll(
    body: EnrollRequest, response: Response, enrolment: EnrolmentDep
) -> EnrollResponse:
    # The answer may hold a private key: no cache anywhere may keep it.
    response.headers["Cache-Control"] = "no-store"
    try:
        return await enrolment.enrol(body)
    except ProblemError as exc:
        enrolment.metrics.enrolment_failures.labels(reason=exc.reason).inc()
        exc.context.update(mac=body.mac, cn=device_cn(body.mac))
        raise
