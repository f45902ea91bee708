"""The registry in PostgreSQL: controllers, tokens and the audit log, as the api's handlers
use them. Every change runs in one transaction with its audit row (`audit`), so a change and
its record commit together or not at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from f2pipe_api.tokens import (
    AUDIT_INSERT,
    TOKEN_COLUMNS,
    Role,
    TokenInfo,
    audit_row,
    token_info,
)

Connection = psycopg.AsyncConnection[TupleRow]

APPLICATION_NAME = "f2pipe-api"
CONTROLLER_COLUMNS = (
    "d.mac, d.name, d.site, d.notes, d.claim_code_hash IS NOT NULL, d.created_at, d.updated_at"
)
_CONTROLLER_FIELDS = ("mac", "name", "site", "notes", "claim_code_pending")


# Connectivity (telemetry.controller_status, migration 0014): not part of `controller()`, so
# the audit log's before/after of a controller never records it.
STATUS_COLUMNS = "cs.status, cs.last_seen"


def status_fields(status: str | None, last_seen: datetime | None) -> dict[str, Any]:
    """STATUS_COLUMNS as the API shows them: "unknown" when the processor never heard of it."""
    return {
        "status": status or "unknown",
        "last_seen": None if last_seen is None else last_seen.isoformat(),
    }


class ConflictError(ValueError):
    """The row exists already (a MAC, a token name)."""


def controller(row: tuple[Any, ...]) -> dict[str, Any]:
    """A controller as the API shows it, and as the audit log records it (JSON-ready)."""
    out: dict[str, Any] = dict(zip(_CONTROLLER_FIELDS, row[:5], strict=True))
    out["created_at"] = row[5].isoformat()
    out["updated_at"] = row[6].isoformat()
    return out


class PostgresStore:
    """The connection pool: opened and closed by the app's lifespan."""

    def __init__(self, conninfo: str, *, max_size: int = 8, timeout: float = 5.0) -> None:
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            open=False,
            name="api",
            kwargs={"application_name": APPLICATION_NAME},
        )

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection in one transaction: a change and its `audit` row commit
        together (the registry modules of the api all write this way)."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection for reads (autocommit off: one read transaction)."""
        async with self.pool.connection() as conn:
            yield conn

    # -- tokens --------------------------------------------------------------------------

    async def token_by_digest(self, digest: bytes) -> tuple[TokenInfo, bytes] | None:
        """The token with this digest (and the stored digest), its last use recorded."""
        async with self.transaction() as conn:
            cur = await conn.execute(
                f"""UPDATE registry.api_tokens SET last_used_at = now()
                    WHERE token_sha256 = %s RETURNING {TOKEN_COLUMNS}, token_sha256""",  # noqa: S608
                (digest,),
            )
            row = await cur.fetchone()
        return None if row is None else (token_info(row[:6]), bytes(row[6]))

    async def list_tokens(self) -> list[TokenInfo]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {TOKEN_COLUMNS} FROM registry.api_tokens ORDER BY name"  # noqa: S608
            )
            return [token_info(r) for r in await cur.fetchall()]

    async def create_token(
        self, actor: str, name: str, role: Role, digest: bytes, expires_days: float | None
    ) -> TokenInfo:
        expires = None if expires_days is None else timedelta(days=expires_days)
        async with self.transaction() as conn:
            cur = await conn.execute(
                f"""INSERT INTO registry.api_tokens (name, role, token_sha256, expires_at)
                    VALUES (%s, %s, %s, now() + %s) ON CONFLICT (name) DO NOTHING
                    RETURNING {TOKEN_COLUMNS}""",  # noqa: S608
                (name, role.value, digest, expires),
            )
            row = await cur.fetchone()
            if row is None:
                raise ConflictError(name)
            info = token_info(row)
            await audit(conn, actor, "token.create", f"token:{name}", before=None,
                         after=info.public())  # fmt: skip
        return info

    async def revoke_token(self, actor: str, name: str) -> TokenInfo | None:
        async with self.transaction() as conn:
            cur = await conn.execute(
                f"""SELECT {TOKEN_COLUMNS} FROM registry.api_tokens
                    WHERE name = %s FOR UPDATE""",  # noqa: S608
                (name,),
            )
            before = await cur.fetchone()
            if before is None:
                return None
            cur = await conn.execute(
                f"""UPDATE registry.api_tokens SET revoked_at = coalesce(revoked_at, now())
                    WHERE name = %s RETURNING {TOKEN_COLUMNS}""",  # noqa: S608
                (name,),
            )
            row = await cur.fetchone()
            assert row is not None
            info = token_info(row)
            await audit(
                conn, actor, "token.revoke", f"token:{name}",
                before=token_info(before).public(), after=info.public(),
            )  # fmt: skip
        return info

    # -- controllers ---------------------------------------------------------------------

    async def list_controllers(
        self,
        *,
        site: str | None,
        search: str | None,
        limit: int,
        offset: int,
        status: str | None = None,
    ) -> tuple[int, list[dict[str, Any]]]:
        where = ["t.is_controller"]
        params: list[Any] = []
        if site is not None:
            where.append("d.site = %s")
            params.append(site)
        if status == "unknown":  # never heard of by the processor
            where.append("cs.device_id IS NULL")
        elif status is not None:
            where.append("cs.status = %s")
            params.append(status)
        if search:
            where.append("(d.mac LIKE %s OR d.name ILIKE %s)")
            pattern = "%" + search.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")
            pattern += "%"
            params += [pattern.lower().replace(":", "").replace("-", ""), pattern]
        sql = f"""FROM registry.devices d JOIN registry.device_types t ON t.id = d.device_type_id
                  LEFT JOIN telemetry.controller_status cs ON cs.device_id = d.id
                  WHERE {" AND ".join(where)}"""
        async with self.pool.connection() as conn:
            cur = await conn.execute(f"SELECT count(*) {sql}", params)
            total_row = await cur.fetchone()
            cur = await conn.execute(
                f"SELECT {CONTROLLER_COLUMNS}, {STATUS_COLUMNS} {sql} "
                "ORDER BY d.mac LIMIT %s OFFSET %s",
                [*params, limit, offset],
            )
            rows = await cur.fetchall()
        assert total_row is not None
        return int(total_row[0]), [{**controller(r), **status_fields(*r[7:9])} for r in rows]

    async def get_controller(self, mac: str) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            found = await _controller(conn, mac)
            if found is None:
                return None
            cur = await conn.execute(
                f"""SELECT {STATUS_COLUMNS} FROM registry.devices d
                    LEFT JOIN telemetry.controller_status cs ON cs.device_id = d.id
                    WHERE d.mac = %s""",  # noqa: S608
                (mac,),
            )
            row = await cur.fetchone()
        return {**found, **status_fields(*(row or (None, None)))}

    async def create_controller(
        self, actor: str, values: dict[str, Any], claim_code_hash: str
    ) -> dict[str, Any]:
        async with self.transaction() as conn:
            type_id = await controller_type(conn)
            cur = await conn.execute(
                """INSERT INTO registry.devices
                       (device_type_id, name, mac, site, notes, claim_code_hash)
                   VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (mac) DO NOTHING RETURNING id""",
                (type_id, values["name"], values["mac"], values.get("site"),
                 values.get("notes"), claim_code_hash),
            )  # fmt: skip
            if await cur.fetchone() is None:
                raise ConflictError(values["mac"])
            after = await _controller(conn, values["mac"])
            assert after is not None
            await audit(conn, actor, "controller.create", f"controller:{values['mac']}",
                         before=None, after=after)  # fmt: skip
        return after

    async def update_controller(
        self, actor: str, mac: str, changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        async with self.transaction() as conn:
            before = await _controller(conn, mac, lock=True)
            if before is None:
                return None
            if changes:
                sets = ", ".join(f"{column} = %s" for column in changes)
                await conn.execute(
                    f"UPDATE registry.devices SET {sets}, updated_at = now() WHERE mac = %s",  # noqa: S608 (column names from the model)
                    [*changes.values(), mac],
                )
            after = await _controller(conn, mac)
            assert after is not None
            await audit(conn, actor, "controller.update", f"controller:{mac}", before=before,
                         after=after)  # fmt: skip
        return after

    async def delete_controller(self, actor: str, mac: str) -> dict[str, Any] | None:
        """Delete the controller row: its connectors and pins go with it (ON DELETE CASCADE),
        its certificates stay with device_id NULL (SET NULL), and telemetry, which has no
        foreign keys to the registry, keeps every reading."""
        async with self.transaction() as conn:
            before = await _controller(conn, mac, lock=True)
            if before is None:
                return None
            await conn.execute("DELETE FROM registry.devices WHERE mac = %s", (mac,))
            await audit(conn, actor, "controller.delete", f"controller:{mac}", before=before,
                         after=None)  # fmt: skip
        return before

    # -- audit ---------------------------------------------------------------------------

    async def list_audit(
        self, *, target: str | None, actor: str | None, limit: int, offset: int
    ) -> tuple[int, list[dict[str, Any]]]:
        where, params = ["true"], []
        if target is not None:
            where.append("target = %s")
            params.append(target)
        if actor is not None:
            where.append("actor = %s")
            params.append(actor)
        sql = f"FROM registry.audit_log WHERE {' AND '.join(where)}"
        async with self.pool.connection() as conn:
            cur = await conn.execute(f"SELECT count(*) {sql}", params)
            total_row = await cur.fetchone()
            cur = await conn.execute(
                f"""SELECT id, at, actor, action, target, before, after {sql}
                    ORDER BY id DESC LIMIT %s OFFSET %s""",
                [*params, limit, offset],
            )
            rows = await cur.fetchall()
        assert total_row is not None
        keys = ("id", "at", "actor", "action", "target", "before", "after")
        return int(total_row[0]), [dict(zip(keys, r, strict=True)) for r in rows]


async def _controller(conn: Connection, mac: str, *, lock: bool = False) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"""SELECT {CONTROLLER_COLUMNS} FROM registry.devices d
            JOIN registry.device_types t ON t.id = d.device_type_id
            WHERE d.mac = %s AND t.is_controller {"FOR UPDATE OF d" if lock else ""}""",  # noqa: S608
        (mac,),
    )
    row = await cur.fetchone()
    return None if row is None else controller(row)


async def controller_type(conn: Connection) -> int:
    """The controllers' device type (seed-demo's `controller`), made when missing."""
    cur = await conn.execute(
        "SELECT id FROM registry.device_types WHERE is_controller ORDER BY id LIMIT 1"
    )
    row = await cur.fetchone()
    if row is None:
        cur = await conn.execute(
            """INSERT INTO registry.device_types (key, name, is_controller)
               VALUES ('controller', 'F2 Smart Controller', true)
               ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key RETURNING id"""
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def audit(  # the one writer of audit rows in the api
    conn: Connection,
    actor: str,
    action: str,
    target: str,
    *,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    await conn.execute(AUDIT_INSERT, audit_row(actor, action, target, before, after))
