"""registry.commands (migration 0015) as the command routes and the MQTT link use it.

Every status change is one UPDATE guarded by the status it leaves, so the PUBACK, the
device's report and the deadline sweep may race (and several api instances may run the
sweep): each change happens once, and a final status never changes again."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb
from pydantic import JsonValue

from f2pipe_api.command_rules import Plan
from f2pipe_api.store import Connection, PostgresStore

COLUMNS = (
    "id, mac, connector, component, topic, payload, status, actor, created_at, deadline, "
    "sent_at, finished_at, reported_status, reverted_at, detail"
)
_KEYS = tuple(c.strip() for c in COLUMNS.split(","))
OPEN = "('queued', 'sent')"
DETAIL_MAX = 500


def command(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_KEYS, row, strict=True))


def json_ready(row: dict[str, Any]) -> dict[str, Any]:
    """The row as the audit log records it."""
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}


async def target(conn: Connection, mac: str, connector: str) -> tuple[int, str | None] | None:
    """The controller's device id and the connector's mode (None: no such connector);
    None when no controller has this MAC."""
    cur = await conn.execute(
        """SELECT d.id, c.mode FROM registry.devices d
           JOIN registry.device_types t ON t.id = d.device_type_id AND t.is_controller
           LEFT JOIN registry.connectors c ON c.controller_id = d.id AND c.name = %s
           WHERE d.mac = %s""",
        (connector, mac),
    )
    row = await cur.fetchone()
    return None if row is None else (int(row[0]), row[1])


async def insert(
    conn: Connection,
    *,
    device_id: int,
    mac: str,
    connector: str,
    component: str,
    plan: Plan,
    actor: str,
    seconds: float,
) -> dict[str, Any]:
    payload: JsonValue = plan.payload
    cur = await conn.execute(
        f"""INSERT INTO registry.commands (device_id, mac, connector, component, topic,
                payload, expect, awaits_report, toggle, actor, deadline)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))
            RETURNING {COLUMNS}""",  # noqa: S608
        (device_id, mac, connector, component, plan.topic,
         None if payload is None else Jsonb(payload), plan.expect, plan.awaits_report,
         plan.toggle, actor, seconds),
    )  # fmt: skip
    row = await cur.fetchone()
    assert row is not None
    return command(row)


async def _one(db: PostgresStore, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
    async with db.transaction() as conn:
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
    return None if row is None else command(row)


async def mark_sent(db: PostgresStore, command_id: int) -> dict[str, Any] | None:
    """PUBACK: queued → sent (a report may have confirmed it already: then only sent_at)."""
    return await _one(
        db,
        f"""UPDATE registry.commands SET sent_at = coalesce(sent_at, now()),
                status = CASE WHEN status = 'queued' THEN 'sent' ELSE status END
            WHERE id = %s AND sent_at IS NULL AND status IN ('queued', 'confirmed')
            RETURNING {COLUMNS}""",  # noqa: S608
        (command_id,),
    )


async def mark_failed(db: PostgresStore, command_id: int, detail: str) -> dict[str, Any] | None:
    """The broker refused it, or it could not be handed to the broker: queued → failed."""
    return await _one(
        db,
        f"""UPDATE registry.commands SET status = 'failed', finished_at = now(), detail = %s
            WHERE id = %s AND status = 'queued' RETURNING {COLUMNS}""",  # noqa: S608
        (detail[:DETAIL_MAX], command_id),
    )


async def confirm_report(
    db: PostgresStore, mac: str, connector: str, component: str, status: bool
) -> dict[str, Any] | None:
    """A stat report of a strike or siren: it confirms the oldest open command of that
    component it agrees with; failing that, it is the revert of the newest confirmed toggle
    that reported the opposite status. None: it answered nothing we sent."""
    found = await _one(
        db,
        f"""UPDATE registry.commands SET status = 'confirmed', finished_at = now(),
                reported_status = %s
            WHERE id = (
                SELECT id FROM registry.commands
                WHERE mac = %s AND connector = %s AND component = %s
                  AND status IN {OPEN} AND awaits_report AND (expect IS NULL OR expect = %s)
                ORDER BY id LIMIT 1 FOR UPDATE
            ) AND status IN {OPEN}
            RETURNING {COLUMNS}""",  # noqa: S608
        (status, mac, connector, component, status),
    )
    if found is not None:
        return found
    return await _one(
        db,
        f"""UPDATE registry.commands SET reverted_at = now()
            WHERE id = (
                SELECT id FROM registry.commands
                WHERE mac = %s AND connector = %s AND component = %s
                  AND toggle AND status = 'confirmed' AND reverted_at IS NULL
                ORDER BY id DESC LIMIT 1 FOR UPDATE
            ) AND reverted_at IS NULL AND reported_status <> %s
            RETURNING {COLUMNS}""",  # noqa: S608
        (mac, connector, component, status),
    )


async def sweep(db: PostgresStore) -> list[dict[str, Any]]:
    """Every command past its deadline still waiting (for PUBACK, or for a report) →
    timed_out. Idempotent: safe from several api instances at once."""
    async with db.transaction() as conn:
        cur = await conn.execute(
            f"""UPDATE registry.commands SET status = 'timed_out', finished_at = now(),
                    detail = CASE WHEN status = 'queued'
                        THEN 'the broker did not acknowledge it before the deadline'
                        ELSE 'no agreeing state report before the deadline' END
                WHERE deadline <= now()
                  AND (status = 'queued' OR (status = 'sent' AND awaits_report))
                RETURNING {COLUMNS}"""  # noqa: S608
        )
        return [command(r) for r in await cur.fetchall()]


async def get(db: PostgresStore, command_id: int) -> dict[str, Any] | None:
    async with db.connection() as conn:
        cur = await conn.execute(
            f"SELECT {COLUMNS} FROM registry.commands WHERE id = %s",  # noqa: S608
            (command_id,),
        )
        row = await cur.fetchone()
    return None if row is None else command(row)


async def history(
    db: PostgresStore, mac: str, *, status: str | None, limit: int, offset: int
) -> tuple[int, list[dict[str, Any]]]:
    where, params = "mac = %s", [mac]
    if status is not None:
        where += " AND status = %s"
        params.append(status)
    async with db.connection() as conn:
        cur = await conn.execute(
            f"SELECT count(*) FROM registry.commands WHERE {where}",  # noqa: S608
            params,
        )
        total = await cur.fetchone()
        cur = await conn.execute(
            f"""SELECT {COLUMNS} FROM registry.commands WHERE {where}
                ORDER BY id DESC LIMIT %s OFFSET %s""",  # noqa: S608
            [*params, limit, offset],
        )
        rows = await cur.fetchall()
    assert total is not None
    return int(total[0]), [command(r) for r in rows]
