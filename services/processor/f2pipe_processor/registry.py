"""What the processor knows about the registry: topic -> device, template -> decoder.

A topic ``…/f2-<mac>/<mode>/J<k>/<component>`` resolves to a ``Location`` (the device on that
pin and its template) or to an ``Unresolved`` (why not: the dead-letter reason). A template
(``f2pipe_shared.registry.Template``) becomes a ``CompiledTemplate`` whose frame datapoints
are compiled once into one decoding function.

The queries and the read model are ``f2pipe_shared.registry``; ``Registry`` runs them with the
processor's connection, timeout and retries. Rows travel between the layers
(PostgreSQL -> Redis -> memory) as plain tuples and lists (``TemplateRow``, ``pack_resolved``),
so Redis stores them as msgpack without a schema of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, NamedTuple, TypeAlias, TypeVar

import psycopg
from psycopg.rows import TupleRow

from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_shared import registry
from f2pipe_shared.deadletters import Reason
from f2pipe_shared.decoding import FrameFormat, TemplateDecoder
from f2pipe_shared.framedecoder import FrameDecoder
from f2pipe_shared.registry import Datapoint, PinLookup, Template
from f2pipe_shared.topics import Topic

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection: TypeAlias = psycopg.AsyncConnection[TupleRow]


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

# The msgpack form of a template's decoding part, as Redis keeps it:
# (id, key, frame_format, verify_crc, datapoints), each datapoint
# (id, key, offset, length, encoding, byte_order, decimals, field).
DatapointRow: TypeAlias = tuple[
    int, str, int | None, int | None, str | None, str, int | None, str | None
]
TemplateRow: TypeAlias = tuple[int, str, str | None, bool, list[DatapointRow]]


def pack_resolved(value: Resolved) -> list[Any]:
    if isinstance(value, Location):
        return [1, *value]
    return [0, value.reason.value, value.detail, value.controller_id, value.connector_id]


def unpack_resolved(item: list[Any]) -> Resolved:
    if item[0] == 1:
        return Location(*item[1:])
    return Unresolved(Reason(item[1]), item[2], item[3], item[4])


def pack_template(template: Template) -> TemplateRow:
    """What of ``template`` decoding needs, as plain values (the Redis form)."""
    points: list[DatapointRow] = []
    for dp in template.datapoints:
        spec = dp.spec
        if spec is None:
            points.append((dp.id, dp.key, None, None, None, "big", None, dp.field))
        else:
            points.append(
                (dp.id, dp.key, spec.offset, spec.length, spec.encoding.value,
                 spec.byte_order.value, spec.decimals, dp.field)
            )  # fmt: skip
    frame_format = None if template.frame_format is None else template.frame_format.value
    return (template.id, template.key, frame_format, template.verify_crc, points)


def unpack_template(row: TemplateRow | list[Any]) -> Template:
    """The template of a ``TemplateRow`` (a tuple, or the lists msgpack gives back).

    Decoding fields only: units, chart and Modbus hints are not in the row and take defaults.
    """
    template_id, key, frame_format, verify_crc, points = row
    return Template(
        id=template_id,
        key=key,
        frame_format=FrameFormat(frame_format) if frame_format else None,
        verify_crc=bool(verify_crc),
        datapoints=tuple(
            Datapoint.from_columns(
                dp_id,
                dp_key,
                offset=offset,
                length=length,
                encoding=encoding,
                byte_order=byte_order,
                decimals=decimals,
                field=field,
            )
            for dp_id, dp_key, offset, length, encoding, byte_order, decimals, field in points
        ),
    )


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A template ready for the hot loop: how to turn a message of one device into readings."""

    id: int
    key: str
    frame_format: FrameFormat | None
    verify_crc: bool
    # Datapoints read from the frame, in the order `decode` returns their values.
    frame_points: tuple[int, ...]
    decode: TemplateDecoder | None  # frame data -> values
    # Frame hex -> values: what decode_messages calls, and the api's /v1/decode answers with.
    frame: FrameDecoder | None
    # Boolean datapoints read from a JSON field: (datapoint id, payload attribute name).
    field_points: tuple[tuple[int, str], ...]
    keys: dict[int, str]  # datapoint id -> key, for /latest

    @classmethod
    def compile(cls, template: Template) -> CompiledTemplate:
        frame = FrameDecoder.compile(template)
        return cls(
            id=template.id,
            key=template.key,
            frame_format=template.frame_format,
            verify_crc=template.verify_crc,
            frame_points=tuple(dp.id for dp in template.frame_points),
            decode=None if frame is None else frame.decode_data,
            frame=frame,
            # Pydantic attribute of the payload model: "door-sensor-1" -> door_sensor_1.
            field_points=tuple(
                (dp.id, dp.field.replace("-", "_"))
                for dp in template.field_points
                if dp.field is not None
            ),
            keys={dp.id: dp.key for dp in template.datapoints},
        )

    @classmethod
    def from_row(cls, row: TemplateRow | list[Any]) -> CompiledTemplate:
        return cls.compile(unpack_template(row))


def location_field(topic: Topic) -> str:
    """The part of a location key below the controller: ``J3/sensor-2``."""
    return f"{topic.connector}/{topic.component}"


class RegistryUnavailable(Exception):
    """A one-shot query failed (callers that must not wait fall back instead)."""


@dataclass(eq=False)
class Registry:
    """The registry database, queried in batches; waits (never gives up) while it is down.

    Waiting is the point: a lookup that cannot be answered holds its raw record, whose
    offset is then not committed, so nothing is lost or dead-lettered by an outage.
    """

    conninfo: str
    retry_max_seconds: float = 5.0
    query_timeout: float = 15.0
    _: KW_ONLY
    metrics: ProcessorMetrics
    _conn: Connection | None = field(default=None, init=False, repr=False)
    down_since: float | None = field(default=None, init=False)  # monotonic time of first failure
    last_error: str | None = field(default=None, init=False)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def locations(self, topics: Sequence[Topic]) -> dict[str, Resolved]:
        """Topic string -> where it points, for every topic given (one query)."""
        keys = [(t.mac, t.connector, t.component) for t in topics]
        found = await self._query(lambda conn: registry.lookup_pins_async(conn, keys))
        return {t.format(): _resolve(t, found[(t.mac, t.connector, t.component)]) for t in topics}

    async def templates(self, ids: Iterable[int]) -> dict[int, TemplateRow]:
        wanted = list(ids)
        found = await self._query(lambda conn: registry.fetch_templates_async(conn, wanted))
        return {template_id: pack_template(t) for template_id, t in found.items()}

    async def macs_for(
        self, *, controllers: Iterable[int], connectors: Iterable[int], devices: Iterable[int]
    ) -> set[str]:
        """MACs of the controllers behind changed rows; no waiting (RegistryUnavailable).

        Two attempts: after a PostgreSQL restart the first finds the old connection dead,
        and the listener's catch-up must not empty the caches for that alone.
        """
        changed = {"controllers": list(controllers), "connectors": list(connectors),
                   "devices": list(devices)}  # fmt: skip
        for attempt in (1, 2):
            try:
                return await self._execute(
                    lambda conn: registry.controller_macs_async(conn, **changed)
                )
            except (psycopg.Error, OSError, TimeoutError) as exc:
                await self._drop_connection()
                if attempt == 2:
                    raise RegistryUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")

    async def _query(self, fetch: Callable[[Connection], Awaitable[T]]) -> T:
        delay = 0.2
        while True:
            try:
                result = await self._execute(fetch)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                await self._drop_connection()
                self._on_failure(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)
                continue
            self._on_success()
            return result

    async def _execute(self, fetch: Callable[[Connection], Awaitable[T]]) -> T:
        conn = await self._connection()
        async with asyncio.timeout(self.query_timeout):
            return await fetch(conn)

    async def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            async with asyncio.timeout(self.query_timeout):
                self._conn = await psycopg.AsyncConnection.connect(
                    self.conninfo,
                    autocommit=True,
                    application_name="f2pipe-processor",
                    connect_timeout=max(2, int(self.query_timeout)),
                )
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Already broken: there is nothing left to close cleanly.
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    def _on_failure(self, exc: BaseException) -> None:
        self.metrics.postgres_retries.inc()
        self.metrics.postgres_up.set(0)
        self.last_error = f"{type(exc).__name__}: {exc}".strip()
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(
                "registry database unavailable: holding the batch and retrying "
                "(offsets are not committed meanwhile)",
                extra={"error": self.last_error},
            )

    def _on_success(self) -> None:
        self.metrics.postgres_up.set(1)
        if self.down_since is not None:
            log.info(
                "registry database is back",
                extra={"down_seconds": round(time.monotonic() - self.down_since, 1)},
            )
            self.down_since = None
            self.last_error = None


def _resolve(topic: Topic, found: PinLookup) -> Resolved:
    connector, component, mode = topic.connector, topic.component, topic.mode
    controller_id, connector_id = found.controller_id, found.connector_id
    connector_mode, device = found.connector_mode, found.device_id
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
    return Location(device, found.template_id, controller_id, connector_id)
