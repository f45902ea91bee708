"""The CRL, written from the registry: after every revocation, and on a timer.

Always the whole list from the registry, never an increment: a CRL written by another
replica, or lost in a crash between a revocation's commit and its CRL write, is made right by
the next write. The timer matters even when nobody revokes anything: a CRL past its
nextUpdate makes the broker refuse *every* client, so it must be signed again in time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from f2pipe_certgen.ca import CaError, CertificateAuthority, RevokedEntry
from f2pipe_certgen.ports import CertificateStore

log = logging.getLogger(__name__)

REFRESH_SECONDS = 3600.0
RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class Published:
    revoked: int  # certificates the CRL lists
    rewritten: bool  # False: the file already listed exactly these and was still fresh


async def publish(db: CertificateStore, ca: CertificateAuthority) -> Published:
    """Rewrite the CRL from every revoked certificate in the registry."""
    async with db.transaction() as tx:
        await tx.lock_crl()  # held while the file is written: replicas write in turn
        entries = await tx.revoked_entries()
        rewritten = await asyncio.to_thread(_write, ca, entries)
    return Published(len(entries), rewritten)


def _write(ca: CertificateAuthority, entries: list[RevokedEntry]) -> bool:
    # write_crl keeps a fresh file with the same entries (the broker restarts on every
    # change): compare, so the log says which happened.
    try:
        before: str | None = ca.crl_pem()
    except CaError:
        before = None
    return ca.write_crl(entries) != before


async def keep_fresh(db: CertificateStore, ca: CertificateAuthority, interval: float) -> None:
    """Rewrite the CRL now and every `interval` seconds, until cancelled."""
    while True:
        try:
            published = await publish(db, ca)
        except Exception as exc:  # keep trying: the next attempt may find the database back
            log.warning("CRL not rewritten; retrying", extra={"error": repr(exc)})
            await asyncio.sleep(min(interval, RETRY_SECONDS))
            continue
        if published.rewritten:
            log.info("CRL rewritten", extra={"revoked": published.revoked})
        else:
            log.debug(
                "CRL unchanged: same entries, still fresh", extra={"revoked": published.revoked}
            )
        await asyncio.sleep(interval)
