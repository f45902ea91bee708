"""Claim-code lockout: too many wrong codes for a MAC refuse it for a while.

State is in PostgreSQL (migration 0008), so it survives restarts and every replica sees it.
The caller holds the MAC's advisory lock (`store.lock_mac`) across check, verification and
recording, so concurrent guesses for one MAC are evaluated one at a time: at most
`max_failures` wrong codes are ever checked per lockout period, however many requests an
attacker sends at once.

With ~79-bit claim codes guessing is hopeless anyway; the lockout keeps it that way and makes
an attack visible (the `locked_out` refusals in logs and metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from f2pipe_certgen.store import Connection


@dataclass(frozen=True)
class LockoutPolicy:
    max_failures: int = 5  # wrong codes within `window`…
    window: timedelta = timedelta(minutes=15)
    duration: timedelta = timedelta(minutes=15)  # …lock the MAC this long


@dataclass(frozen=True)
class Lockout:
    until: datetime
    retry_after: int  # whole seconds until it ends, for the Retry-After header


async def current(conn: Connection, mac: str) -> Lockout | None:
    """The MAC's lockout, if one is in force."""
    cur = await conn.execute(
        """
        SELECT locked_until, ceil(extract(epoch FROM locked_until - now()))::int
        FROM registry.enrolment_lockouts
        WHERE mac = %s AND locked_until > now()
        """,
        (mac,),
    )
    row = await cur.fetchone()
    return None if row is None else Lockout(row[0], max(1, row[1]))


async def record_failure(conn: Connection, mac: str, policy: LockoutPolicy) -> Lockout | None:
    """Count a wrong code; return the lockout when this one started it."""
    await conn.execute(
        "DELETE FROM registry.claim_failures WHERE mac = %s AND failed_at <= now() - %s",
        (mac, policy.window),
    )
    await conn.execute("INSERT INTO registry.claim_failures (mac) VALUES (%s)", (mac,))
    cur = await conn.execute("SELECT count(*) FROM registry.claim_failures WHERE mac = %s", (mac,))
    row = await cur.fetchone()
    failures = row[0] if row else 0
    if failures < policy.max_failures:
        return None
    # The lockout consumes the failures that caused it: once it ends, the MAC starts afresh.
    await conn.execute("DELETE FROM registry.claim_failures WHERE mac = %s", (mac,))
    await conn.execute(
        """
        INSERT INTO registry.enrolment_lockouts (mac, locked_at, locked_until, failures)
        VALUES (%s, now(), now() + %s, %s)
        ON CONFLICT (mac) DO UPDATE SET
            locked_at = EXCLUDED.locked_at,
            locked_until = EXCLUDED.locked_until,
            failures = EXCLUDED.failures
        """,
        (mac, policy.duration, failures),
    )
    return await current(conn, mac)


async def clear(conn: Connection, mac: str) -> None:
    """A right code outside a lockout: forget the MAC's earlier wrong codes."""
    await conn.execute("DELETE FROM registry.claim_failures WHERE mac = %s", (mac,))
    await conn.execute(
        "DELETE FROM registry.enrolment_lockouts WHERE mac = %s AND locked_until <= now()", (mac,)
    )
