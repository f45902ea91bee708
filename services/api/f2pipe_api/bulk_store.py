"""Bulk import and export in the registry: set-based SQL over temp tables, one transaction.

An import COPYs the file's controllers, connectors and pins into temp tables, checks them
against the registry's current state, then changes the registry with a handful of
statements (UPDATE … FROM, INSERT … SELECT): the statement-level NOTIFY triggers send a few
notifications, not one per row. It never deletes: what the file leaves out stays as it is.
A dry run runs the very same statements and rolls back, so it reports what an apply would
do. Imports are serialised by an advisory lock; the one audit row commits with the change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from f2pipe_api.bulk import Catalog, Controller, Errors, ExportRow, Plan, Template
from f2pipe_api.store import Connection, PostgresStore, audit, controller_type

IMPORT_LOCK_KEY = 0x66326275_6C6B  # 'f2bulk' in ASCII
PLACEHOLDER_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA"
# new MACs -> [(mac, claim code, its hash)]: hashing is slow, so the caller decides how.
Hasher = Callable[[Sequence[str]], Awaitable[list[tuple[str, str, str]]]]

_STAGE = """
CREATE TEMP TABLE bulk_controllers (
    line integer, mac text PRIMARY KEY, name text, site text, notes text) ON COMMIT DROP;
CREATE TEMP TABLE bulk_connectors (
    line integer, mac text, name text, mode text, PRIMARY KEY (mac, name)) ON COMMIT DROP;
CREATE TEMP TABLE bulk_pins (
    line integer, mac text, connector text, component text, template_id integer,
    type_id smallint, device_name text, PRIMARY KEY (mac, connector, component)) ON COMMIT DROP;
"""

# A connector whose mode the file changes must not keep a pin, left out of the file, whose
# device needs the old mode: the pin check runs on pins, not on a connector's new mode.
_MODE_CONFLICTS = """
SELECT DISTINCT ON (b.mac, b.name) b.line, b.name, p.component, t.mode
FROM bulk_connectors b
JOIN registry.devices d ON d.mac = b.mac
JOIN registry.connectors c ON c.controller_id = d.id AND c.name = b.name AND c.mode <> b.mode
JOIN registry.pins p ON p.connector_id = c.id
JOIN registry.devices pd ON pd.id = p.device_id
JOIN registry.device_types t ON t.id = pd.device_type_id
WHERE t.mode <> b.mode AND NOT EXISTS (
    SELECT 1 FROM bulk_pins bp
    WHERE bp.mac = b.mac AND bp.connector = b.name AND bp.component = p.component)
ORDER BY b.mac, b.name, p.component
"""

_UPDATE_CONTROLLERS = """
UPDATE registry.devices d SET name = b.name, site = b.site, notes = b.notes
FROM bulk_controllers b
WHERE d.mac = b.mac AND (d.name, d.site, d.notes) IS DISTINCT FROM (b.name, b.site, b.notes)
"""

_NEW_MACS = """
SELECT b.mac FROM bulk_controllers b
WHERE NOT EXISTS (SELECT 1 FROM registry.devices d WHERE d.mac = b.mac) ORDER BY b.line
"""

_INSERT_CONTROLLERS = """
INSERT INTO registry.devices (device_type_id, name, mac, site, notes, claim_code_hash)
SELECT %s, b.name, b.mac, b.site, b.notes, h.hash
FROM unnest(%s::text[], %s::text[]) AS h (mac, hash) JOIN bulk_controllers b USING (mac)
"""

_UPDATE_CONNECTORS = """
UPDATE registry.connectors c SET mode = b.mode
FROM bulk_connectors b JOIN registry.devices d ON d.mac = b.mac
WHERE c.controller_id = d.id AND c.name = b.name AND c.mode <> b.mode
"""

_INSERT_CONNECTORS = """
INSERT INTO registry.connectors (controller_id, name, mode)
SELECT d.id, b.name, b.mode FROM bulk_connectors b JOIN registry.devices d ON d.mac = b.mac
ON CONFLICT (controller_id, name) DO NOTHING
"""

_UPDATE_PIN_DEVICES = """
UPDATE registry.devices pd
SET template_id = b.template_id, device_type_id = b.type_id, name = b.device_name
FROM bulk_pins b
JOIN registry.devices d ON d.mac = b.mac
JOIN registry.connectors c ON c.controller_id = d.id AND c.name = b.connector
JOIN registry.pins p ON p.connector_id = c.id AND p.component = b.component
WHERE pd.id = p.device_id AND (pd.template_id, pd.device_type_id, pd.name)
    IS DISTINCT FROM (b.template_id, b.type_id, b.device_name)
"""

# Device ids are drawn up front (as seed-demo does) so devices and pins are two inserts.
_NEW_PINS = """
CREATE TEMP TABLE bulk_new_pins ON COMMIT DROP AS
SELECT nextval(pg_get_serial_sequence('registry.devices', 'id')) AS device_id,
       c.id AS connector_id, b.component, b.template_id, b.type_id, b.device_name
FROM bulk_pins b
JOIN registry.devices d ON d.mac = b.mac
JOIN registry.connectors c ON c.controller_id = d.id AND c.name = b.connector
WHERE NOT EXISTS (
    SELECT 1 FROM registry.pins p WHERE p.connector_id = c.id AND p.component = b.component)
"""

_INSERT_PIN_DEVICES = """
INSERT INTO registry.devices (id, device_type_id, template_id, name)
SELECT device_id, type_id, template_id, device_name FROM bulk_new_pins
"""

_INSERT_PINS = """
INSERT INTO registry.pins (connector_id, component, device_id)
SELECT connector_id, component, device_id FROM bulk_new_pins
"""

_EXPORT = """
SELECT d.mac, d.name, d.site, d.notes, c.name, c.mode, p.component, tp.key, pd.name
FROM registry.devices d
JOIN registry.device_types t ON t.id = d.device_type_id AND t.is_controller
LEFT JOIN registry.connectors c ON c.controller_id = d.id
LEFT JOIN registry.pins p ON p.connector_id = c.id
LEFT JOIN registry.devices pd ON pd.id = p.device_id
LEFT JOIN registry.device_templates tp ON tp.id = pd.template_id
ORDER BY d.mac, c.name, p.component
"""


@dataclass(frozen=True)
class Counts:
    created: int
    changed: int
    unchanged: int


@dataclass(frozen=True)
class Outcome:
    """What an import did (or, dry, would do); `claim_codes` only when applied."""

    controllers: Counts
    connectors: Counts
    pins: Counts
    claim_codes: list[tuple[str, str]]

    def summary(self) -> dict[str, Any]:
        """For the audit row: counts only, never a claim code."""
        return {kind: vars(getattr(self, kind)) for kind in ("controllers", "connectors", "pins")}


class _DryRun(Exception):
    """Leaves the transaction block with a rollback, carrying what would have happened."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__("dry run")
        self.outcome = outcome


async def catalog(conn: Connection) -> Catalog:
    cur = await conn.execute(
        """SELECT tp.key, tp.id, t.id, t.component, t.mode FROM registry.device_templates tp
           JOIN registry.device_types t ON t.id = tp.device_type_id"""
    )
    return {key: Template(*rest) for key, *rest in await cur.fetchall()}


async def run_import(
    db: PostgresStore,
    plan_for: Callable[[Catalog], Plan],
    *,
    actor: str,
    dry_run: bool,
    hasher: Hasher,
    audit_extra: dict[str, Any],
) -> tuple[Plan, Outcome | None]:
    """Validate (`plan_for`, with the registry's templates) and apply in one transaction;
    roll back on any error or on a dry run. The outcome is None when the plan has errors."""
    plan: Plan | None = None
    outcome: Outcome | None = None
    try:
        async with db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (IMPORT_LOCK_KEY,))
            # A large file's rules take a second or two: off the event loop.
            plan = await asyncio.to_thread(plan_for, await catalog(conn))
            await _stage(conn, plan.controllers)
            await _conflicts(conn, plan.errors)
            if plan.errors:
                raise psycopg.Rollback  # leaves the block, rolled back, without an error
            outcome = await _apply(conn, plan, dry_run=dry_run, hasher=hasher)
            if dry_run:
                raise _DryRun(outcome)
            await audit(conn, actor, "import.apply", "import", before=None,
                        after={**audit_extra, **outcome.summary()})  # fmt: skip
    except _DryRun as dry:
        outcome = dry.outcome
    assert plan is not None
    return plan, outcome


async def _stage(conn: Connection, controllers: Sequence[Controller]) -> None:
    await conn.execute(_STAGE)
    cur = conn.cursor()
    async with cur.copy("COPY bulk_controllers FROM STDIN") as cp:
        for c in controllers:
            await cp.write_row((c.line, c.mac, c.name, c.site, c.notes))
    async with cur.copy("COPY bulk_connectors FROM STDIN") as cp:
        for c in controllers:
            for k in c.connectors.values():
                await cp.write_row((k.line, c.mac, k.name, k.mode))
    async with cur.copy("COPY bulk_pins FROM STDIN") as cp:
        for c in controllers:
            for k in c.connectors.values():
                for p in k.pins.values():
                    await cp.write_row((p.line, c.mac, k.name, p.component, p.template_id,
                                        p.type_id, p.device_name))  # fmt: skip
    # Temp tables have no statistics: without them the planner expects a handful of rows.
    await conn.execute("ANALYZE bulk_controllers, bulk_connectors, bulk_pins")


async def _conflicts(conn: Connection, errors: Errors) -> None:
    cur = await conn.execute(_MODE_CONFLICTS)
    for line, connector, component, mode in await cur.fetchall():
        errors.add(line, ("mode",), "mode_conflict",
                   f"{connector} holds {component}, which this file does not list and whose "
                   f"device needs {mode}: change or remove that pin first.")  # fmt: skip


async def _apply(conn: Connection, plan: Plan, *, dry_run: bool, hasher: Hasher) -> Outcome:
    changed = (await conn.execute(_UPDATE_CONTROLLERS)).rowcount
    macs = [mac for (mac,) in await (await conn.execute(_NEW_MACS)).fetchall()]
    if dry_run:  # nothing will commit: spare the scrypt work
        coded = [(mac, "", PLACEHOLDER_HASH) for mac in macs]
    else:
        coded = await hasher(macs)
    type_id = await controller_type(conn)
    await conn.execute(
        _INSERT_CONTROLLERS, (type_id, [m for m, _, _ in coded], [h for _, _, h in coded])
    )
    connectors_changed = (await conn.execute(_UPDATE_CONNECTORS)).rowcount
    connectors_created = (await conn.execute(_INSERT_CONNECTORS)).rowcount
    pins_changed = (await conn.execute(_UPDATE_PIN_DEVICES)).rowcount
    pins_created = (await conn.execute(_NEW_PINS)).rowcount
    await conn.execute(_INSERT_PIN_DEVICES)
    await conn.execute(_INSERT_PINS)
    n_connectors = sum(len(c.connectors) for c in plan.controllers)
    n_pins = sum(len(k.pins) for c in plan.controllers for k in c.connectors.values())
    return Outcome(
        controllers=_counts(len(plan.controllers), len(macs), changed),
        connectors=_counts(n_connectors, connectors_created, connectors_changed),
        pins=_counts(n_pins, pins_created, pins_changed),
        claim_codes=[] if dry_run else [(mac, code) for mac, code, _ in coded],
    )


def _counts(total: int, created: int, changed: int) -> Counts:
    return Counts(created=created, changed=changed, unchanged=total - created - changed)


async def export_rows(db: PostgresStore) -> list[ExportRow]:
    async with db.connection() as conn:
        cur = await conn.execute(_EXPORT)
        return [ExportRow(*row) for row in await cur.fetchall()]
