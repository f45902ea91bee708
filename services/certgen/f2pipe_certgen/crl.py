"""The CRL, written from the registry: after every revocation, and on a timer.

Always the whole list from the registry, never an increment: a CRL written by another
replica, or lost in a crash between a revocation's commit and its CRL write, is made right by
the next write. The timer matters even when nobody revokes anything: a CRL past its
nextUpdate makes the broker refuse *every* client, so it must be signed again in time.
"""

from __future__ import annotations

import asyncio
import logging

from f2pipe_certgen.ca import CertificateAuthority
from f2pipe_certgen.ports import CertificateStore

log = logging.getLogger(__name__)

REFRESH_SECONDS = 3600.0
RETRY_SECONDS = 30.0


async def publish(db: CertificateStore, ca: CertificateAuthority) -> int:
    """Rewrite the CRL from every revoked certificate in the registry; return how many."""
    async with db.transaction() as tx:
        await tx.lock_crl()  # held while the file is written: replicas write in turn
        entries = await tx.revoked_entries()
        await asyncio.to_thread(ca.write_crl, entries)
    return len(entries)


async def keep_fresh(db: CertificateStore, ca: CertificateAuthority, interval: float) -> None:
    """Rewrite the CRL now and every `interval` seconds, until cancelled."""
    while True:
        try:
            revoked = await publish(db, ca)
        except Exception as exc:  # keep trying: the next attempt may find the database back
            log.warning("CRL not rewritten; retrying", extra={"error": repr(exc)})
            await asyncio.sleep(min(interval, RETRY_SECONDS))
            continue
        log.info("CRL rewritten", extra={"revoked": revoked})
        await asyncio.sleep(interval)
