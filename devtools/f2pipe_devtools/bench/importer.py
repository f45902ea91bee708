"""Bulk import (`POST /v1/import`): a fleet of N controllers (10,000; 1,000 with --quick), each
with seed-demo's layout (4 connectors, 12 pins), as one CSV file, against a bare COPY of
the same rows.

Starts its own PostgreSQL (a temporary directory, `durable=False` as the test servers run),
migrates it and loads seed-demo's templates. Every run starts from an empty fleet. Measured:
- bare COPY: the same controllers, connectors, pin devices and pins, ids precomputed, COPYed
  straight into the registry tables (its row triggers fire); the floor, no checks, no codes;
- parse + validate: the file read and checked (bulk.py), no database;
- import, no scrypt: `bulk_store.run_import` with a placeholder claim code hash: parsing
  aside, everything an import does in the database, in one transaction;
- import dry run, and the idempotent re-import of the same file (0 created, 0 changed);
- import: the api route in-process, new claim codes hashed with scrypt on every core;
- claim code hashing alone, codes/s, as the route hashes them.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient

from f2pipe.migrate import apply_migrations
from f2pipe.seed import CONNECTOR_MODES, LAYOUT, seed_demo
from f2pipe_api import bulk, bulk_store
from f2pipe_api.app import create_app
from f2pipe_api.bulk_routes import hash_new_codes
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.store import PostgresStore
from f2pipe_api.tokens import Role, create_token
from f2pipe_devtools.bench.report import Measurement, Report
from f2pipe_devtools.servers import PostgresServer

BASE_MAC = 0x02F2_0000_0000  # locally administered: no clash with seed-demo's MACs
HASH_SAMPLE = 400


def fleet_csv(n: int) -> bytes:
    out = io.StringIO()
    out.write(",".join(bulk.COLUMNS) + "\n")
    for i in range(n):
        mac = f"{BASE_MAC + i:012x}"
        for slot in LAYOUT:
            mode = CONNECTOR_MODES[slot.connector]
            out.write(f"{mac},Controller {i},site-{i % 50},,{slot.connector},{mode},"
                      f"{slot.component},{slot.template_key},\n")  # fmt: skip
    return out.getvalue().encode()


def _empty_fleet(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("TRUNCATE registry.pins, registry.connectors, registry.certificates")
        conn.execute("DELETE FROM registry.devices")
        conn.execute("VACUUM ANALYZE registry.devices, registry.connectors, registry.pins")


def bare_copy(conninfo: str, plan: bulk.Plan) -> None:
    """The plan's rows, ids precomputed, COPYed into the registry: the floor."""
    with psycopg.connect(conninfo) as conn:
        (type_id,) = conn.execute(
            "SELECT id FROM registry.device_types WHERE is_controller"
        ).fetchone() or (0,)
        row = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM registry.devices").fetchone()
        next_id = row[0] if row else 1
        devices: list[tuple[object, ...]] = []
        connectors: list[tuple[object, ...]] = []
        pins: list[tuple[object, ...]] = []
        device_id, connector_id = next_id, 1
        for c in plan.controllers:
            controller_id = device_id
            devices.append((device_id, type_id, None, c.name, c.mac, c.site, c.notes))
            device_id += 1
            for k in c.connectors.values():
                connectors.append((connector_id, controller_id, k.name, k.mode))
                for p in k.pins.values():
                    devices.append((device_id, p.type_id, p.template_id, p.device_name,
                                    None, None, None))  # fmt: skip
                    pins.append((connector_id, p.component, device_id))
                    device_id += 1
                connector_id += 1
        with conn.cursor() as cur:
            for sql, rows in (
                ("COPY registry.devices (id, device_type_id, template_id, name, mac, site, "
                 "notes) FROM STDIN", devices),
                ("COPY registry.connectors (id, controller_id, name, mode) FROM STDIN",
                 connectors),
                ("COPY registry.pins (connector_id, component, device_id) FROM STDIN", pins),
            ):  # fmt: skip
                with cur.copy(sql) as cp:
                    for row in rows:
                        cp.write_row(row)


def _no_scrypt(conninfo: str, data: bytes, *, dry_run: bool = False) -> bulk_store.Outcome:
    async def placeholder(macs: object) -> list[tuple[str, str, str]]:
        assert isinstance(macs, list)
        return [(m, "", bulk_store.PLACEHOLDER_HASH) for m in macs]

    async def go() -> bulk_store.Outcome:
        db = PostgresStore(conninfo)
        await db.pool.open(wait=True)
        try:
            parsed = bulk.parse_csv(data)
            plan, outcome = await bulk_store.run_import(
                db, lambda cat: bulk.validate(parsed, cat), actor="bench", dry_run=dry_run,
                hasher=placeholder, audit_extra={},
            )  # fmt: skip
        finally:
            await db.close()
        assert outcome is not None, plan.errors.items[:3]
        return outcome

    return asyncio.run(go())


def _seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(report: Report, repeats: int, min_seconds: float) -> None:
    n = 10_000 if min_seconds >= 0.3 else 1_000
    data = fleet_csv(n)
    shape = f"{n:,} controllers, {4 * n:,} connectors, {12 * n:,} pins ({len(data) / 1e6:.1f} MB)"
    runs = max(1, min(repeats, 3))
    with tempfile.TemporaryDirectory(prefix="f2pipe-bench-import-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
        with PostgresServer(directory / "postgres", durable=False) as server:
            conninfo = server.create_database("bench")
            apply_migrations(conninfo)
            seed_demo(conninfo, 0)
            _measure(report, conninfo, data, n=n, runs=runs, shape=shape)


def _measure(report: Report, conninfo: str, data: bytes, *, n: int, runs: int, shape: str) -> None:
    catalog = asyncio.run(_catalog(conninfo))
    plan = bulk.validate(bulk.parse_csv(data), catalog)
    assert not plan.errors, plan.errors.items[:3]
    timings: dict[str, list[float]] = {k: [] for k in ("copy", "validate", "db", "dry", "again")}
    for _ in range(runs):
        _empty_fleet(conninfo)
        timings["copy"].append(_seconds(lambda: bare_copy(conninfo, plan)))
        timings["validate"].append(_seconds(lambda: bulk.validate(bulk.parse_csv(data), catalog)))
        _empty_fleet(conninfo)
        timings["dry"].append(_seconds(lambda: _no_scrypt(conninfo, data, dry_run=True)))
        timings["db"].append(_seconds(lambda: _no_scrypt(conninfo, data)))
        timings["again"].append(_seconds(lambda: _no_scrypt(conninfo, data)))
    notes = {
        "copy": ("bare COPY into the registry tables", "ids precomputed; no checks, no codes"),
        "validate": ("parse + validate (bulk.py)", "no database"),
        "dry": ("import dry run", "same statements, rolled back; no scrypt"),
        "db": ("import, placeholder claim code hash", "everything but scrypt, one transaction"),
        "again": ("re-import of the same file", "0 created, 0 changed"),
    }
    for key, (name, note) in notes.items():
        report.add(Measurement(name, "s", timings[key], f"{shape}; {note}"))
    codes = ["x"] * HASH_SAMPLE
    rate = HASH_SAMPLE / _seconds(lambda: asyncio.run(hash_new_codes(codes)))
    report.add(Measurement("claim code hashing (scrypt, thread per core)", "codes/s", [rate],
                           f"{HASH_SAMPLE} codes; {n:,} would take {n / rate:.0f} s"))  # fmt: skip
    _empty_fleet(conninfo)
    token, _ = create_token(conninfo, "bench", Role.operator)
    app = create_app(db=PostgresStore(conninfo), metrics=ApiMetrics())
    with TestClient(app) as http:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/csv"}
        started = time.perf_counter()
        r = http.post("/v1/import?dry_run=false", content=data, headers=headers, timeout=3600)
        elapsed = time.perf_counter() - started
    if r.status_code != 200 or r.json()["controllers"]["created"] != n:
        raise RuntimeError(f"import failed: {r.status_code} {r.text[:500]}")
    report.add(Measurement("import through the api (POST /v1/import)", "s", [elapsed],
                           f"{shape}; new claim codes hashed with scrypt"))  # fmt: skip


async def _catalog(conninfo: str) -> bulk.Catalog:
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        return await bulk_store.catalog(conn)
