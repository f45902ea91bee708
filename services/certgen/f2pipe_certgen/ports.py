"""What certgen talks to that a unit test replaces: the registry (certificates, controllers)
and the clock. `store.PostgresStore` and `SystemClock` are the production
adapters; they satisfy these protocols structurally, and so do a test's fakes.

The store's unit of work is a transaction: `async with store.transaction() as tx:` commits
when the block ends without an exception and rolls back otherwise, so a caller puts several
reads and writes in one (re-enrolment: the MAC's lock, its certificates revoked, the new one
recorded).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

if TYPE_CHECKING:  # ca.py takes a Clock: importing it here at run time would be circular
    from f2pipe_certgen.ca import IssuedCertificate, RevokedEntry

# What an operator may give as a reason: the CA's REVOCATION_REASONS without certificate_hold,
# which is meant to be lifted again, and certgen has no way to lift it.
RevocationReason = Literal[
    "unspecified",
    "key_compromise",
    "ca_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
]
Status = Literal["valid", "revoked"]
Kind = Literal["device", "service", "broker"]


@dataclass(frozen=True)
class Controller:
    id: int
    mac: str
    claim_code_hash: str | None


@dataclass(frozen=True)
class CertificateRow:
    """One certificate as the registry records it."""

    serial: str
    cn: str
    kind: str
    device_id: int | None
    not_before: datetime
    not_after: datetime
    status: str
    revoked_at: datetime | None
    revocation_reason: str | None  # ReasonFlags name, as the API shows it (key_compromise)
    fingerprint_sha256: str
    created_at: datetime


class CertificateQuery(NamedTuple):
    """Which certificates to list (None: any) and which page of them, newest first."""

    cn: str | None
    status: Status | None
    kind: Kind | None
    limit: int
    offset: int


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, time-zone aware."""
        ...


class SystemClock:
    """The production clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


SYSTEM_CLOCK = SystemClock()


class CertificateRecords(Protocol):
    """Controllers and the certificates issued to them, within one transaction."""

    async def lock_mac(self, mac: str) -> None:
        """Serialise work on one MAC (enrolment, revocation) until the transaction ends,
        across replicas too."""
        ...

    async def find_controller(self, mac: str) -> Controller | None: ...

    async def record_certificate(self, cert: IssuedCertificate, device_id: int | None) -> None:
        """Record an issued certificate as valid (recording one twice changes nothing)."""
        ...

    async def revoke_valid_of_cn(self, cn: str, reason: RevocationReason) -> list[CertificateRow]:
        """Revoke every valid *device* certificate with this CN; return them as revoked."""
        ...

    async def revoke_serial(
        self, serial: str, reason: RevocationReason
    ) -> tuple[CertificateRow | None, bool]:
        """(the certificate, whether this call revoked it); (None, False) for an unknown
        serial. `serial` is lowercase hex without leading zeros."""
        ...

    async def list_certificates(self, query: CertificateQuery) -> tuple[list[CertificateRow], int]:
        """A page of certificates, newest first, and how many match in all."""
        ...

    async def lock_crl(self) -> None:
        """Take the CRL writers' lock until the transaction ends (replicas write in turn)."""
        ...

    async def revoked_entries(self) -> list[RevokedEntry]:
        """Every revoked certificate, for the CRL."""
        ...


class StoreTransaction(CertificateRecords, Protocol):
    """Everything certgen reads and writes in the registry, in one transaction."""


class CertificateStore(Protocol):
    """The registry database; opened and closed by the app's lifespan."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Return when the database answers; raise otherwise."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction]: ...
