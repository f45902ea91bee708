"""The SQL behind the api's registry routes: device types, templates with their datapoints,
connectors, pins, and claim-code rotation. Functions take a connection; the caller opens the
transaction (`PostgresStore.transaction()`) and writes the audit row in it, so a change and its
record commit together. Every write fires the registry's NOTIFY triggers (migration 0003):
that is how the processor hears of it, nothing here has to.

`refusals()` turns what the database refuses (a CHECK, a trigger, a foreign or unique key)
into a problem naming the rule, never the value: these checks are the backstop of the api's
own validation, and a race between two requests must not become a 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import psycopg
from psycopg import errors
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from f2pipe_api.store import CONTROLLER_COLUMNS, controller
from f2pipe_shared.problems import ProblemError

Connection = psycopg.AsyncConnection[TupleRow]


@asynccontextmanager
async def refusals() -> AsyncIterator[None]:
    """Database refusals as 409/422 problems; wrap it around `db.transaction()`."""
    try:
        yield
    except errors.ForeignKeyViolation as exc:
        raise ProblemError("in_use", f"Other registry rows refer to it ({_rule(exc)}).") from exc
    except errors.UniqueViolation as exc:
        raise ProblemError(
            "conflict", f"It would duplicate a registry row ({_rule(exc)})."
        ) from exc
    except (errors.IntegrityError, errors.DataError) as exc:
        raise ProblemError(
            "constraint_violation", f"The registry refused the change ({_rule(exc)})."
        ) from exc


def _rule(exc: psycopg.Error) -> str:
    # The constraint's name is ours (migration 0002); the message may quote a value sent.
    name = exc.diag.constraint_name
    if name:
        return f"constraint {name}"
    return "a registry trigger" if isinstance(exc, errors.IntegrityError) else "a column's type"


async def _page(
    conn: Connection, select: str, sql: str, params: Sequence[Any], *, order: str, limit: int,
    offset: int,
) -> tuple[int, list[TupleRow]]:  # fmt: skip
    cur = await conn.execute(f"SELECT count(*) {sql}", params)
    total = await cur.fetchone()
    cur = await conn.execute(
        f"SELECT {select} {sql} ORDER BY {order} LIMIT %s OFFSET %s", [*params, limit, offset]
    )
    assert total is not None
    return int(total[0]), await cur.fetchall()


def like(search: str) -> str:
    """A LIKE pattern matching ``search`` anywhere, its wildcards taken literally."""
    escaped = search.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")
    return f"%{escaped}%"


# -- device types -------------------------------------------------------------------------


class DeviceType(NamedTuple):
    id: int
    key: str
    name: str
    is_controller: bool
    component: str | None
    mode: str | None
    description: str | None

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in self._asdict().items() if k != "id"}


_TYPE_COLUMNS = "t.id, t.key, t.name, t.is_controller, t.component, t.mode, t.description"


async def list_device_types(
    conn: Connection, *, component: str | None, mode: str | None, search: str | None,
    limit: int, offset: int,
) -> tuple[int, list[DeviceType]]:  # fmt: skip
    where, params = ["true"], []
    for column, value in (("t.component", component), ("t.mode", mode)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if search:
        where.append("(t.key ILIKE %s OR t.name ILIKE %s)")
        params += [like(search), like(search)]
    sql = f"FROM registry.device_types t WHERE {' AND '.join(where)}"
    total, rows = await _page(conn, _TYPE_COLUMNS, sql, params, order="t.key", limit=limit,
                               offset=offset)  # fmt: skip
    return total, [DeviceType(*r) for r in rows]


async def device_type(conn: Connection, key: str, *, lock: bool = False) -> DeviceType | None:
    cur = await conn.execute(
        f"SELECT {_TYPE_COLUMNS} FROM registry.device_types t WHERE t.key = %s"  # noqa: S608
        + (" FOR UPDATE" if lock else ""),
        (key,),
    )
    row = await cur.fetchone()
    return None if row is None else DeviceType(*row)


async def insert_device_type(conn: Connection, values: Mapping[str, Any]) -> DeviceType | None:
    """The new type; None when its key is taken."""
    cur = await conn.execute(
        """INSERT INTO registry.device_types
               (key, name, is_controller, component, mode, description)
           VALUES (%(key)s, %(name)s, %(is_controller)s, %(component)s, %(mode)s, %(description)s)
           ON CONFLICT (key) DO NOTHING RETURNING key""",
        values,
    )
    if await cur.fetchone() is None:
        return None
    return await device_type(conn, values["key"])


async def update_device_type(conn: Connection, key: str, changes: Mapping[str, Any]) -> None:
    sets = ", ".join(f"{column} = %s" for column in changes)  # names from the model
    await conn.execute(
        f"UPDATE registry.device_types SET {sets} WHERE key = %s",  # noqa: S608
        [*changes.values(), key],
    )


async def device_type_uses(conn: Connection, type_id: int) -> tuple[int, int]:
    """How many templates and devices are of this type."""
    cur = await conn.execute(
        """SELECT (SELECT count(*) FROM registry.device_templates WHERE device_type_id = %s),
                  (SELECT count(*) FROM registry.devices WHERE device_type_id = %s)""",
        (type_id, type_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def delete_device_type(conn: Connection, type_id: int) -> None:
    await conn.execute("DELETE FROM registry.device_types WHERE id = %s", (type_id,))


# -- templates ----------------------------------------------------------------------------

_TEMPLATE_COLUMNS = """tp.id, tp.key, ty.key, tp.name, tp.description, tp.frame_format,
    tp.verify_crc, tp.modbus_address, tp.modbus_function, tp.modbus_register,
    tp.modbus_register_count, tp.created_at,
    (SELECT count(*) FROM registry.devices d WHERE d.template_id = tp.id)"""
_TEMPLATE_FIELDS = (
    "id", "key", "device_type", "name", "description", "frame_format", "verify_crc",
    "modbus_address", "modbus_function", "modbus_register", "modbus_register_count",
    "created_at", "devices",
)  # fmt: skip
_TEMPLATE_FROM = """FROM registry.device_templates tp
    JOIN registry.device_types ty ON ty.id = tp.device_type_id"""
DATAPOINT_FIELDS = (
    "key", "label", "unit", "offset", "length", "encoding", "byte_order", "decimals", "field",
    "chart_min", "chart_max", "chart_type", "chart_color", "sort_order",
)  # fmt: skip
_DP_COLUMNS = ", ".join(f'"{f}"' for f in DATAPOINT_FIELDS)
_DP_RECORD = """x (key text, label text, unit text, "offset" integer, length integer,
    encoding text, byte_order text, decimals smallint, field text, chart_min double precision,
    chart_max double precision, chart_type text, chart_color text, sort_order smallint)"""
_TEMPLATE_WRITE = ("name", "description", "frame_format", "verify_crc", "modbus_address",
                   "modbus_function", "modbus_register", "modbus_register_count")  # fmt: skip


async def _with_datapoints(conn: Connection, rows: Sequence[TupleRow]) -> list[dict[str, Any]]:
    templates = [dict(zip(_TEMPLATE_FIELDS, r, strict=True)) for r in rows]
    cur = await conn.execute(
        f"""SELECT template_id, id, {_DP_COLUMNS} FROM registry.datapoints
            WHERE template_id = ANY(%s) ORDER BY template_id, sort_order, id""",  # noqa: S608
        ([t["id"] for t in templates],),
    )
    points: dict[int, list[dict[str, Any]]] = {t["id"]: [] for t in templates}
    for row in await cur.fetchall():
        points[row[0]].append(dict(zip(("id", *DATAPOINT_FIELDS), row[1:], strict=True)))
    for t in templates:
        t["datapoints"] = points[t["id"]]
        t["created_at"] = t["created_at"].isoformat()  # JSON-ready for the audit log too
    return templates


async def list_templates(
    conn: Connection, *, device_type: str | None, frame_format: str | None, search: str | None,
    limit: int, offset: int,
) -> tuple[int, list[dict[str, Any]]]:  # fmt: skip
    where, params = ["true"], []
    for column, value in (("ty.key", device_type), ("tp.frame_format", frame_format)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if search:
        where.append("(tp.key ILIKE %s OR tp.name ILIKE %s)")
        params += [like(search), like(search)]
    sql = f"{_TEMPLATE_FROM} WHERE {' AND '.join(where)}"
    total, rows = await _page(conn, _TEMPLATE_COLUMNS, sql, params, order="tp.key", limit=limit,
                               offset=offset)  # fmt: skip
    return total, await _with_datapoints(conn, rows)


async def template(conn: Connection, key: str, *, lock: bool = False) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {_TEMPLATE_COLUMNS} {_TEMPLATE_FROM} WHERE tp.key = %s"
        + (" FOR UPDATE OF tp" if lock else ""),
        (key,),
    )
    row = await cur.fetchone()
    return None if row is None else (await _with_datapoints(conn, [row]))[0]


async def insert_template(
    conn: Connection, key: str, type_id: int, values: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The new template with its datapoints; None when its key is taken."""
    columns = ", ".join(_TEMPLATE_WRITE)
    cur = await conn.execute(
        f"""INSERT INTO registry.device_templates (key, device_type_id, {columns})
            VALUES (%s, %s, {", ".join(["%s"] * len(_TEMPLATE_WRITE))})
            ON CONFLICT (key) DO NOTHING RETURNING id""",  # noqa: S608
        [key, type_id, *(values.get(c) for c in _TEMPLATE_WRITE)],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    await _put_datapoints(conn, int(row[0]), values["datapoints"])
    return await template(conn, key)


async def update_template(
    conn: Connection, template_id: int, type_id: int, values: Mapping[str, Any]
) -> None:
    """Replace the template's fields and datapoints. A datapoint keeps its id while its key
    stays (readings refer to datapoint ids); one left out is deleted, its readings kept."""
    sets = ", ".join(f"{c} = %s" for c in _TEMPLATE_WRITE)
    await conn.execute(
        f"UPDATE registry.device_templates SET device_type_id = %s, {sets} WHERE id = %s",  # noqa: S608
        [type_id, *(values.get(c) for c in _TEMPLATE_WRITE), template_id],
    )
    keys = [dp["key"] for dp in values["datapoints"]]
    await conn.execute(
        "DELETE FROM registry.datapoints WHERE template_id = %s AND NOT key = ANY(%s)",
        (template_id, keys),
    )
    await _put_datapoints(conn, template_id, values["datapoints"])


async def _put_datapoints(
    conn: Connection, template_id: int, datapoints: Sequence[Mapping[str, Any]]
) -> None:
    if not datapoints:
        return
    updates = ", ".join(f'"{f}" = EXCLUDED."{f}"' for f in DATAPOINT_FIELDS if f != "key")
    await conn.execute(
        f"""INSERT INTO registry.datapoints (template_id, {_DP_COLUMNS})
            SELECT %s, {", ".join(f'x."{f}"' for f in DATAPOINT_FIELDS)}
            FROM jsonb_to_recordset(%s) AS {_DP_RECORD}
            ON CONFLICT (template_id, key) DO UPDATE SET {updates}""",  # noqa: S608
        (template_id, Jsonb([dict(dp) for dp in datapoints])),
    )


async def delete_template(conn: Connection, template_id: int) -> None:
    """Its datapoints go with it (ON DELETE CASCADE); readings have no foreign keys."""
    await conn.execute("DELETE FROM registry.device_templates WHERE id = %s", (template_id,))


class TemplateRef(NamedTuple):
    """A template as a pin needs it: its id, and its device type's."""

    id: int
    key: str
    type: DeviceType


async def template_ref(conn: Connection, key: str) -> TemplateRef | None:
    cur = await conn.execute(
        f"""SELECT tp.id, tp.key, {_TYPE_COLUMNS} FROM registry.device_templates tp
            JOIN registry.device_types t ON t.id = tp.device_type_id WHERE tp.key = %s""",  # noqa: S608
        (key,),
    )
    row = await cur.fetchone()
    return None if row is None else TemplateRef(row[0], row[1], DeviceType(*row[2:]))


# -- controllers, connectors and pins ------------------------------------------------------


async def controller_id(conn: Connection, mac: str, *, lock: bool = False) -> int | None:
    """The controller's id; `lock` serialises changes to one controller's layout."""
    cur = await conn.execute(
        f"""SELECT d.id FROM registry.devices d JOIN registry.device_types t
                ON t.id = d.device_type_id
            WHERE d.mac = %s AND t.is_controller {"FOR UPDATE OF d" if lock else ""}""",  # noqa: S608
        (mac,),
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


_PIN_SELECT = """SELECT p.connector_id, p.component, p.position, d.id, d.name, t.key, tp.key
    FROM registry.pins p JOIN registry.devices d ON d.id = p.device_id
    JOIN registry.device_types t ON t.id = d.device_type_id
    LEFT JOIN registry.device_templates tp ON tp.id = d.template_id"""


def _pin(row: TupleRow) -> dict[str, Any]:
    _, component, position, device_id, name, type_key, template_key = row
    return {
        "component": component,
        "position": position,
        "device": {"id": device_id, "name": name, "device_type": type_key,
                   "template": template_key},
    }  # fmt: skip


async def connectors(
    conn: Connection, controller: int, name: str | None = None
) -> list[dict[str, Any]]:
    """The controller's connectors (or the one named), each with its pins."""
    cur = await conn.execute(
        """SELECT id, name, mode FROM registry.connectors
           WHERE controller_id = %s AND (%s::text IS NULL OR name = %s) ORDER BY name""",
        (controller, name, name),
    )
    found = {row[0]: {"name": row[1], "mode": row[2], "pins": []} for row in await cur.fetchall()}
    cur = await conn.execute(
        _PIN_SELECT + " WHERE p.connector_id = ANY(%s) ORDER BY p.component", (list(found),)
    )
    for row in await cur.fetchall():
        found[row[0]]["pins"].append(_pin(row))
    return list(found.values())


class ConnectorRow(NamedTuple):
    id: int
    mode: str
    pins: int


async def connector(
    conn: Connection, controller: int, name: str, *, lock: bool = True
) -> ConnectorRow | None:
    cur = await conn.execute(
        f"""SELECT c.id, c.mode, (SELECT count(*) FROM registry.pins p WHERE p.connector_id = c.id)
            FROM registry.connectors c WHERE c.controller_id = %s AND c.name = %s
            {"FOR UPDATE" if lock else ""}""",  # noqa: S608
        (controller, name),
    )
    row = await cur.fetchone()
    return None if row is None else ConnectorRow(int(row[0]), str(row[1]), int(row[2]))


async def put_connector(
    conn: Connection, controller: int, name: str, mode: str, existing: ConnectorRow | None
) -> None:
    if existing is None:
        await conn.execute(
            "INSERT INTO registry.connectors (controller_id, name, mode) VALUES (%s, %s, %s)",
            (controller, name, mode),
        )
    else:
        await conn.execute(
            "UPDATE registry.connectors SET mode = %s WHERE id = %s", (mode, existing.id)
        )


async def delete_connector(conn: Connection, connector_id: int) -> None:
    """Its pins go with it (ON DELETE CASCADE); the devices on them stay, as history."""
    await conn.execute("DELETE FROM registry.connectors WHERE id = %s", (connector_id,))


async def pin(
    conn: Connection, connector_id: int, component: str, *, lock: bool = True
) -> dict[str, Any] | None:
    cur = await conn.execute(
        _PIN_SELECT
        + " WHERE p.connector_id = %s AND p.component = %s"
        + (" FOR UPDATE OF p" if lock else ""),
        (connector_id, component),
    )
    row = await cur.fetchone()
    return None if row is None else _pin(row)


async def put_pin(
    conn: Connection, connector_id: int, component: str, *, device_name: str, ref: TemplateRef,
    current: dict[str, Any] | None,
) -> None:  # fmt: skip
    """Put the device `device_name` of template `ref` on the pin. The same name as the device
    there now: that device is re-pointed (its id, and so its readings, continue). Another
    name: a new device takes the pin; the one before stays, off any pin, with its history."""
    if current is not None and current["device"]["name"] == device_name:
        device_id = current["device"]["id"]
        await conn.execute(
            """UPDATE registry.devices SET template_id = %s, device_type_id = %s,
                   updated_at = now() WHERE id = %s""",
            (ref.id, ref.type.id, device_id),
        )
        # Re-checks the pin (registry.check_pin fires on pins only) and notifies its change.
        await conn.execute("UPDATE registry.pins SET device_id = device_id WHERE device_id = %s",
                           (device_id,))  # fmt: skip
        return
    cur = await conn.execute(
        """INSERT INTO registry.devices (device_type_id, template_id, name)
           VALUES (%s, %s, %s) RETURNING id""",
        (ref.type.id, ref.id, device_name),
    )
    new = await cur.fetchone()
    assert new is not None
    if current is None:
        await conn.execute(
            "INSERT INTO registry.pins (connector_id, component, device_id) VALUES (%s, %s, %s)",
            (connector_id, component, new[0]),
        )
    else:
        await conn.execute(
            "UPDATE registry.pins SET device_id = %s WHERE connector_id = %s AND component = %s",
            (new[0], connector_id, component),
        )


async def delete_pin(conn: Connection, connector_id: int, component: str) -> None:
    """The device that sat there stays (off any pin): its readings keep their labels."""
    await conn.execute(
        "DELETE FROM registry.pins WHERE connector_id = %s AND component = %s",
        (connector_id, component),
    )


# -- claim codes --------------------------------------------------------------------------


async def rotate_claim_code(conn: Connection, mac: str, claim_code_hash: str) -> dict[str, Any]:
    """Store a new claim code's hash; the controller as it is after (never the code)."""
    cur = await conn.execute(
        f"""UPDATE registry.devices d SET claim_code_hash = %s, updated_at = now()
            FROM registry.device_types t
            WHERE t.id = d.device_type_id AND t.is_controller AND d.mac = %s
            RETURNING {CONTROLLER_COLUMNS}""",  # noqa: S608
        (claim_code_hash, mac),
    )
    row = await cur.fetchone()
    assert row is not None
    return controller(row)


async def controller_row(conn: Connection, mac: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"""SELECT {CONTROLLER_COLUMNS} FROM registry.devices d
            JOIN registry.device_types t ON t.id = d.device_type_id
            WHERE d.mac = %s AND t.is_controller FOR UPDATE OF d""",  # noqa: S608
        (mac,),
    )
    row = await cur.fetchone()
    return None if row is None else controller(row)


async def template_id(conn: Connection, key: str) -> int | None:
    cur = await conn.execute("SELECT id FROM registry.device_templates WHERE key = %s", (key,))
    row = await cur.fetchone()
    return None if row is None else int(row[0])
