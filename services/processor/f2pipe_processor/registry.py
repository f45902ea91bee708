"""What the processor knows about the registry, and the PostgreSQL queries that fetch it.

A topic ``…/f2-<mac>/<mode>/J<k>/<component>`` resolves to a ``Location`` (the device on that
pin and its template) or to an ``Unresolved`` (why not: the dead-letter reason). A template
becomes a ``Template`` whose frame datapoints are compiled once into one decoding function.

Rows travel between the layers (PostgreSQL -> Redis -> memory) as plain tuples and lists, so
Redis stores them as msgpack without a schema of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import psycopg
from psycopg.rows import TupleRow

from f2pipe_processor import metrics
from f2pipe_shared.deadletters import Reason
from f2pipe_shared.decoding import DecodingSpec, FrameFormat, TemplateDecoder, compile_template
from f2pipe_shared.topics import Topic

log = logging.getLogger(__name__)


class Location(NamedTuple):
    """The device a topic's messages belong to."""

    device_id: int
    template_id: int | None
    controller_id: int
    connector_id: int


class Unresolved(NamedTuple):
    """A topic no device answers to; ``reason`` is the dead-letter reason."""

    reason: Reason
    detail: str
    controller_id: int | None
    connector_id: int | None


Resolved: TypeAlias = Location | Unresolved

# (id, key, offset, length, encoding, byte_order, decimals, field): the datapoints columns.
DatapointRow: TypeAlias = tuple[
    int, str, int | None, int | None, str | None, str, int | None, str | None
]
# (id, key, frame_format, verify_crc, datapoints)
TemplateRow: TypeAlias = tuple[int, str, str | None, bool, list[DatapointRow]]


def pack_resolved(value: Resolved) -> list[Any]:
    if isinstance(value, Location):
        return [1, *value]
    return [0, value.reason.value, value.detail, value.controller_id, value.connector_id]


def unpack_resolved(item: list[Any]) -> Resolved:
    if item[0] == 1:
        return Location(*item[1:])
    return Unresolved(Reason(item[1]), item[2], item[3], item[4])


@dataclass(frozen=True, slots=True)
class Template:
    """How to turn a message of one kind of device into readings."""

    id: int
    key: str
    frame_format: FrameFormat | None
    verify_crc: bool
    # Datapoints read from the frame, in the order `decode` returns their values.
    frame_points: tuple[int, ...]
    decode: TemplateDecoder | None
    # Boolean datapoints read from a JSON field: (datapoint id, payload attribute name).
    field_points: tuple[tuple[int, str], ...]
    keys: dict[int, str]  # datapoint id -> key, for /latest

    @classmethod
    def from_row(cls, row: TemplateRow | list[Any]) -> Template:
        template_id, key, frame_format, verify_crc, points = row
        frame_ids: list[int] = []
        specs: list[DecodingSpec] = []
        fields: list[tuple[int, str]] = []
        for dp_id, _key, offset, length, encoding, byte_order, decimals, field in points:
            if field is not None:
                # Pydantic attribute of the payload model: "door-sensor-1" -> door_sensor_1.
                fields.append((dp_id, field.replace("-", "_")))
            else:
                frame_ids.append(dp_id)
                specs.append(
                    DecodingSpec(
                        offset=offset,
                        length=length,
                        encoding=encoding,
                        byte_order=byte_order,
                        decimals=decimals,
                    )
                )
        return cls(
            id=template_id,
            key=key,
            frame_format=FrameFormat(frame_format) if frame_format else None,
            verify_crc=bool(verify_crc),
            frame_points=tuple(frame_ids),
            decode=compile_template(specs) if specs else None,
            field_points=tuple(fields),
            keys={p[0]: p[1] for p in points},
        )


def location_field(topic: Topic) -> str:
    """The part of a location key below the controller: ``J3/sensor-2``."""
    return f"{topic.connector}/{topic.component}"


_LOCATIONS_SQL = """
SELECT k.mac, k.connector, k.component, k.mode, ctl.id, c.id, c.mode, p.device_id, d.template_id
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS k (mac, connector, component, mode)
LEFT JOIN registry.devices AS ctl ON ctl.mac = k.mac
LEFT JOIN registry.connectors AS c ON c.controller_id = ctl.id AND c.name = k.connector
LEFT JOIN registry.pins AS p ON p.connector_id = c.id AND p.component = k.component
LEFT JOIN registry.devices AS d ON d.id = p.device_id
"""

_TEMPLATES_SQL = """
SELECT t.id, t.key, t.frame_format, t.verify_crc,
       dp.id, dp.key, dp."offset", dp.length, dp.encoding, dp.byte_order, dp.decimals, dp.field
FROM registry.device_templates AS t
LEFT JOIN registry.datapoints AS dp ON dp.template_id = t.id
WHERE t.id = ANY(%s)
ORDER BY t.id, dp.sort_order, dp.id
"""

# The controllers' MACs behind changed rows: Redis keeps locations per MAC.
_MACS_SQL = """
SELECT mac FROM registry.devices WHERE mac IS NOT NULL AND id = ANY(%(controllers)s)
UNION
SELECT d.mac FROM registry.connectors AS c JOIN registry.devices AS d ON d.id = c.controller_id
WHERE c.id = ANY(%(connectors)s)
UNION
SELECT controller_mac FROM registry.device_locations
WHERE controller_mac IS NOT NULL AND device_id = ANY(%(devices)s)
"""


class RegistryUnavailable(Exception):
    """A one-shot query failed (callers that must not wait fall back instead)."""


class Registry:
    """The registry database, queried in batches; waits (never gives up) while it is down.

    Waiting is the point: a lookup that cannot be answered holds its raw record, whose
    offset is then not committed, so nothing is lost or dead-lettered by an outage.
    """

    def __init__(
        self, conninfo: str, retry_max_seconds: float = 5.0, query_timeout: float = 15.0
    ) -> None:
        self._conninfo = conninfo
        self._retry_max = retry_max_seconds
        self._timeout = query_timeout
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self.down_since: float | None = None  # monotonic time of the first failure
        self.last_error: str | None = None

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def locations(self, topics: Sequence[Topic]) -> dict[str, Resolved]:
        """Topic string -> where it points, for every topic given (one query)."""
        rows = await self._query(
            _LOCATIONS_SQL,
            (
                [t.mac for t in topics],
                [t.connector for t in topics],
                [t.component for t in topics],
                [t.mode for t in topics],
            ),
        )
        by_key = {(r[0], r[1], r[2]): r for r in rows}
        return {
            t.format(): _resolve_row(t, by_key[(t.mac, t.connector, t.component)]) for t in topics
        }

    async def templates(self, ids: Iterable[int]) -> dict[int, TemplateRow]:
        rows = await self._query(_TEMPLATES_SQL, (list(ids),))
        templates: dict[int, TemplateRow] = {}
        for template_id, key, frame_format, verify_crc, *point in rows:
            entry = templates.get(template_id)
            if entry is None:
                entry = templates[template_id] = (template_id, key, frame_format, verify_crc, [])
            if point[0] is not None:  # LEFT JOIN: a template without datapoints
                entry[4].append(tuple(point))
        return templates

    async def macs_for(
        self, *, controllers: Iterable[int], connectors: Iterable[int], devices: Iterable[int]
    ) -> set[str]:
        """MACs of the controllers behind changed rows; one attempt (RegistryUnavailable)."""
        params = {
            "controllers": list(controllers),
            "connectors": list(connectors),
            "devices": list(devices),
        }
        try:
            rows = await self._execute(_MACS_SQL, params)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self._drop_connection()
            raise RegistryUnavailable(str(exc)) from exc
        return {row[0] for row in rows}

    async def _query(self, sql: str, params: Any) -> list[TupleRow]:
        delay = 0.2
        while True:
            try:
                rows = await self._execute(sql, params)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                await self._drop_connection()
                self._on_failure(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            self._on_success()
            return rows

    async def _execute(self, sql: str, params: Any) -> list[TupleRow]:
        conn = await self._connection()
        async with asyncio.timeout(self._timeout):
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()

    async def _connection(self) -> psycopg.AsyncConnection[TupleRow]:
        if self._conn is None or self._conn.closed:
            async with asyncio.timeout(self._timeout):
                self._conn = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    application_name="f2pipe-processor",
                    connect_timeout=max(2, int(self._timeout)),
                )
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Already broken: there is nothing left to close cleanly.
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    def _on_failure(self, exc: BaseException) -> None:
        metrics.POSTGRES_RETRIES.inc()
        metrics.POSTGRES_UP.set(0)
        self.last_error = f"{type(exc).__name__}: {exc}".strip()
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(
                "registry database unavailable: holding the batch and retrying "
                "(offsets are not committed meanwhile)",
                extra={"error": self.last_error},
            )

    def _on_success(self) -> None:
        metrics.POSTGRES_UP.set(1)
        if self.down_since is not None:
            log.info(
                "registry database is back",
                extra={"down_seconds": round(time.monotonic() - self.down_since, 1)},
            )
            self.down_since = None
            self.last_error = None


def _resolve_row(topic: Topic, row: TupleRow) -> Resolved:
    _, connector, component, mode, controller_id, connector_id, connector_mode, device, tpl = row
    where = f"controller f2-{topic.mac}"
    if controller_id is None:
        return Unresolved(Reason.unknown_mac, f"no controller with MAC {topic.mac}", None, None)
    if connector_id is None:
        return Unresolved(
            Reason.unmapped_connector,
            f"{where} (id {controller_id}) has no connector {connector}",
            controller_id,
            None,
        )
    if connector_mode != mode:
        return Unresolved(
            Reason.unmapped_connector,
            f"connector {connector} of {where} is in {connector_mode}, the topic says {mode}",
            controller_id,
            connector_id,
        )
    if device is None:
        return Unresolved(
            Reason.unmapped_position,
            f"no device on {connector}/{component} of {where}",
            controller_id,
            connector_id,
        )
    return Location(device, tpl, controller_id, connector_id)
