"""LISTEN registry_changed: registry edits reach the caches within milliseconds.

The database sends one notification per changed statement (f2pipe/migrations/0003); each becomes a
``Change`` the resolver applies to memory and Redis. A listener that (re)connects cannot
know what it missed, so it starts from empty caches. Silence is checked with a ``SELECT 1``
now and then: a dead TCP connection would otherwise look like a quiet registry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from f2pipe_processor.resolver import Change, Resolver

log = logging.getLogger(__name__)

CHANNEL = "registry_changed"
# The parent key each table's notification carries (see docs/data_model.md).
PARENT_KEYS = {
    "pins": "connector_ids",
    "connectors": "controller_ids",
    "datapoints": "template_ids",
    "device_templates": "device_type_ids",
    "devices": "macs",
}


def parse_change(payload: str) -> Change | None:
    """A notification's JSON payload as a Change; None for a payload we do not understand."""
    try:
        doc: Any = json.loads(payload)
        table = doc["table"]
        ids = doc.get("ids")
        parents = doc.get(PARENT_KEYS.get(table, ""), None) or []
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(table, str) or not (ids is None or isinstance(ids, list)):
        return None
    return Change(table, None if ids is None else tuple(ids), tuple(parents))


@dataclass(eq=False)
class RegistryListener:
    conninfo: str
    resolver: Resolver
    retry_max_seconds: float = 5.0
    keepalive_seconds: float = 10.0
    connected: bool = field(default=False, init=False)
    applied: int = field(default=0, init=False)
    last_change_at: float | None = field(default=None, init=False)  # wall clock of last change

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo,
                    autocommit=True,
                    application_name="f2pipe-processor-listener",
                    connect_timeout=5,
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    # Whatever changed while nobody listened is unknown: start over.
                    await self.resolver.flush()
                    self.connected = True
                    delay = 0.2
                    log.info("listening for registry changes", extra={"channel": CHANNEL})
                    await self._listen(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if self.connected:
                    log.warning(
                        "registry listener lost its connection; caches will be emptied on "
                        "reconnect",
                        extra={"error": f"{type(exc).__name__}: {exc}"},
                    )
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)

    async def _listen(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        while True:
            async for notify in conn.notifies(timeout=self.keepalive_seconds):
                await self._apply(notify.payload)
            async with asyncio.timeout(5):
                await conn.execute("SELECT 1")

    async def _apply(self, payload: str) -> None:
        change = parse_change(payload)
        if change is None:
            log.warning("unreadable registry_changed payload: emptying the caches",
                        extra={"payload": payload[:200]})  # fmt: skip
            await self.resolver.flush()
        else:
            await self.resolver.invalidate(change)
        self.applied += 1
        self.last_change_at = time.time()
        log.debug("registry change applied", extra={"payload": payload[:200]})
