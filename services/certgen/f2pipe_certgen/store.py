"""The registry in PostgreSQL: certgen's `CertificateStore` (ports.py) and its start-up access.

`PostgresStore.transaction()` lends a pooled connection as a `PostgresTransaction`: it
commits when its block ends without an exception and rolls back otherwise. `startup()` is the
synchronous connection start-up uses before the event loop runs: it checks the registry is
migrated, then records what the CA's bootstrap created.

Revocation reasons: the API and the CA speak cryptography's `ReasonFlags` names
(`key_compromise`), the table stores its values (`keyCompromise`) as docs/data_model.md says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

import psycopg
from cryptography import x509
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from f2pipe_certgen.ca import REVOCATION_REASONS, IssuedCertificate, RevokedEntry
from f2pipe_certgen.ports import (
    CertificateQuery,
    CertificateRow,
    Controller,
    RevocationReason,
)

Connection = psycopg.AsyncConnection[TupleRow]

APPLICATION_NAME = "f2pipe-certgen"
# A table of the last migration certgen needs (0008: the `broker` kind of certificates).
# certgen no longer uses the table itself: the enrolment throttle is in memory (lockout.py).
REQUIRED_TABLE = "registry.enrolment_lockouts"

# Advisory lock keys: one class for per-MAC enrolment locks ('f2' in ASCII), one key for CRL
# writers ('f2crl'), so replicas sharing the CA directory write the CRL one at a time.
_MAC_LOCK_CLASS = 0x6632
_CRL_LOCK_KEY = 0x6632_63726C

_COLUMNS = """serial, cn, kind, device_id, not_before, not_after, status, revoked_at,
    revocation_reason, fingerprint_sha256, created_at"""


class RegistryNotMigratedError(RuntimeError):
    """The registry database lacks the tables certgen needs."""


class PostgresStore:
    """The connection pool: opened and closed by the app's lifespan."""

    def __init__(self, conninfo: str, *, max_size: int = 8, timeout: float = 5.0) -> None:
        self.conninfo = conninfo
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            open=False,
            name="certgen",
            kwargs={"application_name": APPLICATION_NAME},
        )

    async def open(self) -> None:
        # Not waiting: certgen starts (and /healthz says 503) while the database is away.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self.pool.connection() as conn:
            yield PostgresTransaction(conn)

    @contextmanager
    def startup(self) -> Iterator[StartupRegistry]:
        """A connection to a migrated registry (RegistryNotMigratedError otherwise), for the
        CA's bootstrap; psycopg.OperationalError when the database cannot be reached."""
        with psycopg.connect(
            self.conninfo, application_name=APPLICATION_NAME, connect_timeout=10
        ) as conn:
            row = conn.execute("SELECT to_regclass(%s)", (REQUIRED_TABLE,)).fetchone()
            if row is None or row[0] is None:
                raise RegistryNotMigratedError(
                    "the registry database is not migrated for certgen "
                    f"({REQUIRED_TABLE} is missing): run `f2pipe migrate` first"
                )
            yield StartupRegistry(conn)


class StartupRegistry:
    def __init__(self, conn: psycopg.Connection[TupleRow]) -> None:
        self._conn = conn

    def record_issued(self, certs: Iterable[IssuedCertificate]) -> None:
        """Record certificates the CA's bootstrap just created (broker, services): no device."""
        with self._conn.transaction():
            for cert in certs:
                self._conn.execute(_INSERT, _insert_params(cert, None))


class PostgresTransaction:
    """One pooled connection's transaction: `ports.StoreTransaction` in SQL."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # --- controllers and certificates -------------------------------------------------------

    async def lock_mac(self, mac: str) -> None:
        await self._conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_MAC_LOCK_CLASS, mac)
        )

    async def find_controller(self, mac: str) -> Controller | None:
        cur = await self._conn.execute(
            "SELECT id, mac, claim_code_hash FROM registry.devices WHERE mac = %s", (mac,)
        )
        row = await cur.fetchone()
        return None if row is None else Controller(*row)

    async def record_certificate(self, cert: IssuedCertificate, device_id: int | None) -> None:
        await self._conn.execute(_INSERT, _insert_params(cert, device_id))

    async def revoke_valid_of_cn(self, cn: str, reason: RevocationReason) -> list[CertificateRow]:
        # By CN rather than device id: the CN is what the broker authenticates, and it still
        # names the certificates of a device that was deleted from the registry.
        cur = await self._conn.execute(
            f"""
            UPDATE registry.certificates
            SET status = 'revoked', revoked_at = now(), revocation_reason = %s
            WHERE cn = %s AND kind = 'device' AND status = 'valid'
            RETURNING {_COLUMNS}
            """,  # noqa: S608 - _COLUMNS is a constant
            (x509.ReasonFlags[reason].value, cn),
        )
        return [_certificate(row) for row in await cur.fetchall()]

    async def revoke_serial(
        self, serial: str, reason: RevocationReason
    ) -> tuple[CertificateRow | None, bool]:
        cur = await self._conn.execute(
            f"SELECT {_COLUMNS} FROM registry.certificates WHERE serial = %s FOR UPDATE",  # noqa: S608
            (serial,),
        )
        row = await cur.fetchone()
        if row is None or row[6] == "revoked":
            return (None if row is None else _certificate(row)), False
        cur = await self._conn.execute(
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
        return _certificate(updated), True

    async def list_certificates(self, query: CertificateQuery) -> tuple[list[CertificateRow], int]:
        where = """
            WHERE (%(cn)s::text IS NULL OR cn = %(cn)s)
              AND (%(status)s::text IS NULL OR status = %(status)s)
              AND (%(kind)s::text IS NULL OR kind = %(kind)s)
        """
        params = query._asdict()
        cur = await self._conn.execute(
            f"SELECT {_COLUMNS} FROM registry.certificates {where}"  # noqa: S608 - constants
            " ORDER BY created_at DESC, serial LIMIT %(limit)s OFFSET %(offset)s",
            params,
        )
        rows = [_certificate(row) for row in await cur.fetchall()]
        cur = await self._conn.execute(
            f"SELECT count(*) FROM registry.certificates {where}",  # noqa: S608
            params,
        )
        total = await cur.fetchone()
        return rows, total[0] if total else 0

    async def lock_crl(self) -> None:
        await self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CRL_LOCK_KEY,))

    async def revoked_entries(self) -> list[RevokedEntry]:
        cur = await self._conn.execute(
            """
            SELECT serial, revoked_at, coalesce(revocation_reason, 'unspecified')
            FROM registry.certificates WHERE status = 'revoked' ORDER BY revoked_at, serial
            """
        )
        return [
            RevokedEntry(serial=serial, revoked_at=at, reason=_crl_reason(reason))
            for serial, at, reason in await cur.fetchall()
        ]


def _certificate(row: Sequence[object]) -> CertificateRow:
    values = list(row)
    if values[8] is not None:
        values[8] = x509.ReasonFlags(values[8]).name
    return CertificateRow(*values)  # type: ignore[arg-type]


def _crl_reason(stored: str) -> str:
    # A reason the CA does not sign (set by hand in the table, e.g. aACompromise) must not
    # stop the CRL from being written: the serial is listed, as 'unspecified'.
    name = x509.ReasonFlags(stored).name
    return name if name in REVOCATION_REASONS else "unspecified"


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
