"""What the console shows of a controller's data (read only, role viewer):

- `GET /v1/controllers/{mac}/telemetry`: every device of the controller (the controller
  itself and what sits on its pins) with each datapoint's newest value and its last
  `minutes` as a series of at most `MAX_POINTS` averaged buckets; door, exit-button and
  motion states are datapoints of the boolean form (`kind: state`). Also the newest events
  and the controller's messages per minute.
- `GET /v1/activity`: messages per minute of every controller heard in the last `minutes`,
  for the fleet page.

A message is one (device, device timestamp) in telemetry.readings or one event that is not a
connectivity transition (the processor's own). Windows are bounded (`MAX_MINUTES`), so every
query reads a bounded slice of the hypertables through their (device_id, timestamp) indexes.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from f2pipe_api import registry_store as rs
from f2pipe_api.controllers import MacPath, _mac, _unknown
from f2pipe_api.deps import AUTH_REASONS, DbDep, Viewer
from f2pipe_api.problems import PROBLEMS

MAX_MINUTES = 24 * 60
MAX_POINTS = 360
RATE_MINUTES = 10
RECENT_EVENTS = 20
BUCKET_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)  # divide an hour
Minutes = Annotated[int, Query(ge=1, le=MAX_MINUTES, description="how far back, in minutes")]

router = APIRouter(tags=["telemetry"])


class Point(BaseModel):
    t: datetime
    v: float


class DatapointSeries(BaseModel):
    id: int
    key: str = Field(examples=["temperature"])
    label: str
    unit: str | None = Field(examples=["°C"])
    kind: Literal["number", "state"] = Field(
        description="state: a boolean (door open, button pressed, motion): 1 true, 0 false"
    )
    latest: Point | None = Field(description="the newest value ever stored, however old")
    series: list[Point] = Field(description=f"the window, averaged into ≤ {MAX_POINTS} buckets")


class DeviceTelemetry(BaseModel):
    id: int
    name: str
    device_type: str
    connector: str | None = Field(description="null for the controller itself")
    component: str | None
    datapoints: list[DatapointSeries]


class RecentEvent(BaseModel):
    timestamp: datetime
    device_id: int
    device: str
    kind: str = Field(examples=["scan"])
    data: dict[str, Any]


class ControllerTelemetry(BaseModel):
    mac: str
    minutes: int
    bucket_seconds: float = Field(description="each series point averages this long")
    messages_per_minute: float = Field(description=f"over the last {RATE_MINUTES} minutes")
    devices: list[DeviceTelemetry]
    events: list[RecentEvent] = Field(description=f"the newest {RECENT_EVENTS}, newest first")


class Activity(BaseModel):
    mac: str
    messages: int = Field(description="messages in the window")
    messages_per_minute: float
    last_message: datetime


class ActivityPage(BaseModel):
    minutes: int
    items: list[Activity] = Field(description="controllers heard in the window, by MAC")


_DEVICES = """
SELECT l.device_id, l.device_name, l.device_type, l.connector, l.component,
       dp.id, dp.key, dp.label, dp.unit, dp.field IS NOT NULL
FROM registry.device_locations l
LEFT JOIN registry.datapoints dp ON dp.template_id = l.template_id
WHERE l.controller_mac = %s
ORDER BY l.connector NULLS FIRST, l.component, l.device_id, dp.sort_order, dp.id"""

# The newest value of each (device, datapoint): one index probe each, however long the history.
_LATEST = """
SELECT k.device_id, k.datapoint_id, r.timestamp, r.value
FROM unnest(%s::bigint[], %s::int[]) AS k(device_id, datapoint_id)
CROSS JOIN LATERAL (
    SELECT timestamp, value FROM telemetry.readings
    WHERE device_id = k.device_id AND datapoint_id = k.datapoint_id
    ORDER BY timestamp DESC LIMIT 1) r"""

_SERIES = """
SELECT device_id, datapoint_id, date_bin(%s, timestamp, TIMESTAMPTZ '2000-01-01') AS t, avg(value)
FROM telemetry.readings
WHERE device_id = ANY(%s) AND timestamp >= now() - %s
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""

_EVENTS = """
SELECT e.timestamp, e.device_id, e.kind, e.data FROM telemetry.events e
WHERE e.device_id = ANY(%s) AND e.kind <> 'connectivity'
ORDER BY e.timestamp DESC LIMIT %s"""

_MESSAGES = """
SELECT l.controller_mac, count(*), max(m.timestamp) FROM (
    SELECT DISTINCT device_id, timestamp FROM telemetry.readings
    WHERE timestamp >= now() - %(window)s AND (%(devices)s::bigint[] IS NULL
                                                OR device_id = ANY(%(devices)s))
    UNION ALL
    SELECT device_id, timestamp FROM telemetry.events
    WHERE timestamp >= now() - %(window)s AND kind <> 'connectivity'
      AND (%(devices)s::bigint[] IS NULL OR device_id = ANY(%(devices)s))
) m JOIN registry.device_locations l ON l.device_id = m.device_id
WHERE l.controller_mac IS NOT NULL
GROUP BY l.controller_mac ORDER BY l.controller_mac"""


def bucket(minutes: int) -> timedelta:
    """The shortest round step giving at most MAX_POINTS points over `minutes`. Round, since
    date_bin counts steps from 2000-01-01: a step like 10 min / 360 (1.666667 s, rounded to
    the microsecond) would put its bins ever further from round clock times, so readings a
    second apart at hh:mm:10 would fall in one bin for weeks and in two for the next weeks."""
    wanted = minutes * 60 / MAX_POINTS
    return timedelta(seconds=next((s for s in BUCKET_STEPS_S if s >= wanted), math.ceil(wanted)))


def _devices(rows: list[tuple[Any, ...]]) -> dict[int, DeviceTelemetry]:
    devices: dict[int, DeviceTelemetry] = {}
    for device_id, name, dtype, connector, component, dp_id, key, label, unit, state in rows:
        device = devices.setdefault(device_id, DeviceTelemetry(
            id=device_id, name=name, device_type=dtype, connector=connector,
            component=component, datapoints=[]))  # fmt: skip
        if dp_id is not None:
            device.datapoints.append(DatapointSeries(
                id=dp_id, key=key, label=label, unit=unit, kind="state" if state else "number",
                latest=None, series=[]))  # fmt: skip
    return devices


async def _rate(conn: rs.Connection, devices: list[int] | None) -> dict[str, tuple[int, datetime]]:
    cur = await conn.execute(
        _MESSAGES, {"window": timedelta(minutes=RATE_MINUTES), "devices": devices}
    )
    return {mac: (int(n), last) for mac, n, last in await cur.fetchall()}


@router.get(
    "/v1/controllers/{mac}/telemetry",
    response_model=ControllerTelemetry,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_mac", "invalid_mac", "invalid_request"),
    summary="A controller's devices with each datapoint's newest value and recent series (viewer)",
)
async def controller_telemetry(
    caller: Viewer, db: DbDep, mac: MacPath, minutes: Minutes = 60
) -> ControllerTelemetry:
    mac = _mac(mac)
    async with db.connection() as conn:
        if await rs.controller_id(conn, mac) is None:
            raise _unknown(mac)
        devices = _devices(await (await conn.execute(_DEVICES, (mac,))).fetchall())
        points = {(d.id, p.id): p for d in devices.values() for p in d.datapoints}
        keys = list(points)
        latest = await conn.execute(_LATEST, ([k[0] for k in keys], [k[1] for k in keys]))
        for device_id, dp_id, t, v in await latest.fetchall():
            points[(device_id, dp_id)].latest = Point(t=t, v=v)
        step, ids = bucket(minutes), list(devices)
        series = await conn.execute(_SERIES, (step, ids, timedelta(minutes=minutes)))
        for device_id, dp_id, t, v in await series.fetchall():
            if (found := points.get((device_id, dp_id))) is not None:
                found.series.append(Point(t=t, v=v))
        events = await (await conn.execute(_EVENTS, (ids, RECENT_EVENTS))).fetchall()
        rate = (await _rate(conn, ids)).get(mac, (0, None))[0]
    return ControllerTelemetry(
        mac=mac, minutes=minutes, bucket_seconds=step.total_seconds(),
        messages_per_minute=rate / RATE_MINUTES, devices=list(devices.values()),
        events=[RecentEvent(timestamp=t, device_id=d, device=devices[d].name, kind=k, data=data)
                for t, d, k, data in events],
    )  # fmt: skip


@router.get(
    "/v1/activity",
    response_model=ActivityPage,
    responses=PROBLEMS.responses(*AUTH_REASONS, "invalid_request"),
    summary=f"Messages per minute of every controller heard in the last {RATE_MINUTES} "
    "minutes (viewer)",
)
async def activity(caller: Viewer, db: DbDep) -> ActivityPage:
    async with db.connection() as conn:
        found = await _rate(conn, None)
    return ActivityPage(minutes=RATE_MINUTES, items=[
        Activity(mac=mac, messages=n, messages_per_minute=n / RATE_MINUTES, last_message=last)
        for mac, (n, last) in found.items()])  # fmt: skip
