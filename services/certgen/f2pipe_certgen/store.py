"""certgen's queries on the registry: controllers, issued certificates, revocations.

Functions take a connection so a caller can put several in one transaction (a connection from
`Store.connection()` commits when its block ends without an exception, and rolls back
otherwise). Revocation reasons: the API and the CA speak cryptography's `ReasonFlags` names
(`key_compromise`), the table stores its values (`keyCompromise`) as docs/data_model.md says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import psycopg
from cryptography import x509
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from f2pipe_certgen.ca import (
    REVOCATION_REASONS,
    CertificateAuthority,
    IssuedCertificate,
    RevokedEntry,
)

Connection = psycopg.AsyncConnection[TupleRow]

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

# Advisory lock keys: one class for per-MAC enrolment locks ('f2' in ASCII), one key for CRL
# writers ('f2crl'), so replicas sharing the CA directory write the CRL one at a time.
_MAC_LOCK_CLASS = 0x6632
_CRL_LOCK_KEY = 0x6632_63726C

_COLUMNS = """serial, cn, kind, device_id, not_before, not_after, status, revoked_at,
    revocation_reason, fingerprint_sha256, created_at"""


@dataclass(frozen=True)
class Controller:
    id: int
    mac: str
    claim_code_hash: str | None


@dataclass(frozen=True)
class CertificateRow:
    serial: str
    cn: str
    kind: str
    device_id: int | None
    not_before: datetime
    not_after: datetime
    status: str
    revoked_at: datetime | None
    revocation_reason: str | None  # ReasonFlags name, as the API shows it
    fingerprint_sha256: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: Sequence[object]) -> CertificateRow:
        values = list(row)
        if values[8] is not None:
            values[8] = x509.ReasonFlags(values[8]).name
        return cls(*values)  # type: ignore[arg-type]


class Store:
    """The connection pool; opened and closed by the app's lifespan."""

    def __init__(self, conninfo: str, *, max_size: int = 8, timeout: float = 5.0) -> None:
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            open=False,
            name="certgen",
            kwargs={"application_name": "f2pipe-certgen"},
        )

    async def open(self) -> None:
        # Not waiting: certgen starts (and /healthz says 503) while the database is away.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with self.pool.connection() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.execute("SELECT 1")


async def lock_mac(conn: Connection, mac: str) -> None:
    """Serialise enrolments of one MAC until the transaction ends (across replicas too)."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_MAC_LOCK_CLASS, mac))


async def find_controller(conn: Connection, mac: str) -> Controller | None:
    cur = await conn.execute(
        "SELECT id, mac, claim_code_hash FROM registry.devices WHERE mac = %s", (mac,)
    )
    row = await cur.fetchone()
    return None if row is None else Controller(*row)


async def record_certificate(
    conn: Connection, cert: IssuedCertificate, device_id: int | None
) -> None:
    await conn.execute(_INSERT, _insert_params(cert, device_id))


async def revoke_valid_of_cn(
    conn: Connection, cn: str, reason: RevocationReason
) -> list[CertificateRow]:
    """Revoke every valid device certificate with this CN (a device's, by its f2-<mac>).

    By CN rather than device id: the CN is what the broker authenticates, and it still names
    the certificates of a device that was deleted from the registry.
    """
    cur = await conn.execute(
        f"""
        UPDATE registry.certificates
        SET status = 'revoked', revoked_at = now(), revocation_reason = %s
        WHERE cn = %s AND kind = 'device' AND status = 'valid'
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - _COLUMNS is a constant
        (x509.ReasonFlags[reason].value, cn),
    )
    return [CertificateRow.from_row(row) for row in await cur.fetchall()]


async def revoke_serial(
    conn: Connection, serial: str, reason: RevocationReason
) -> tuple[CertificateRow | None, bool]:
    """(the certificate, whether this call revoked it); (None, False) for an unknown serial."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM registry.certificates WHERE serial = %s FOR UPDATE",  # noqa: S608
        (serial,),
    )
    row = await cur.fetchone()
    if row is None or row[6] == "revoked":
        return (None if row is None else CertificateRow.from_row(row)), False
    cur = await conn.execute(
        f"""
        UPDATE registry.certificates
        SET status = 'revoked', revoked_at = now(), revocation_reason = %s
        WHERE serial = %s
        RETURNING {_COLUMNS}
        """,  # noqa: S608
        (x509.ReasonFlags[reason].value, serial),
    )
    updated = await cur.fetchone()
    assert updated is not None
    return CertificateRow.from_row(updated), True


async def list_certificates(
    conn: Connection,
    *,
    cn: str | None,
    status: Status | None,
    kind: Kind | None,
    limit: int,
    offset: int,
) -> tuple[list[CertificateRow], int]:
    """A page of certificates, newest first, and how many match in all."""
    where = """
        WHERE (%(cn)s::text IS NULL OR cn = %(cn)s)
          AND (%(status)s::text IS NULL OR status = %(status)s)
          AND (%(kind)s::text IS NULL OR kind = %(kind)s)
    """
    params = {"cn": cn, "status": status, "kind": kind, "limit": limit, "offset": offset}
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM registry.certificates {where}"  # noqa: S608 - constants
        " ORDER BY created_at DESC, serial LIMIT %(limit)s OFFSET %(offset)s",
        params,
    )
    rows = [CertificateRow.from_row(row) for row in await cur.fetchall()]
    cur = await conn.execute(f"SELECT count(*) FROM registry.certificates {where}", params)  # noqa: S608
    total = await cur.fetchone()
    return rows, total[0] if total else 0


async def revoked_entries(conn: Connection) -> list[RevokedEntry]:
    cur = await conn.execute(
        """
        SELECT serial, revoked_at, coalesce(revocation_reason, 'unspecified')
        FROM registry.certificates WHERE status = 'revoked' ORDER BY revoked_at, serial
        """
    )
    return [
        RevokedEntry(serial=serial, revoked_at=at, reason=_crl_reason(reason))
        for serial, at, reason in await cur.fetchall()
    ]


def _crl_reason(stored: str) -> str:
    # A reason the CA does not sign (set by hand in the table, e.g. aACompromise) must not
    # stop the CRL from being written: the serial is listed, as 'unspecified'.
    name = x509.ReasonFlags(stored).name
    return name if name in REVOCATION_REASONS else "unspecified"


async def publish_crl(store: Store, ca: CertificateAuthority) -> int:
    """Rewrite the CRL from every revoked certificate in the registry; return how many.

    Always the whole list from the database, never an increment: a CRL written by another
    replica, or lost in a crash between a revocation and its CRL write, is made right by the
    next write.
    """
    async with store.connection() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CRL_LOCK_KEY,))
        entries = await revoked_entries(conn)
        await asyncio.to_thread(ca.write_crl, entries)
    return len(entries)


def record_issued_sync(
    conn: psycopg.Connection[TupleRow], certs: Iterable[IssuedCertificate]
) -> None:
    """Record certificates the CA's bootstrap just created (broker, services): no device."""
    with conn.transaction():
        for cert in certs:
            conn.execute(_INSERT, _insert_params(cert, None))


_INSERT = """
    INSERT INTO registry.certificates
        (serial, device_id, cn, kind, not_before, not_after, fingerprint_sha256)
    VALUES (%(serial)s, %(device_id)s, %(cn)s, %(kind)s, %(not_before)s, %(not_after)s,
            %(fingerprint)s)
    ON CONFLICT (serial) DO NOTHING
"""


def _insert_params(cert: IssuedCertificate, device_id: int | None) -> dict[str, object]:
    return {
        "serial": cert.serial,
        "device_id": device_id,
        "cn": cert.cn,
        "kind": cert.kind,
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "fingerprint": cert.fingerprint_sha256,
    }
