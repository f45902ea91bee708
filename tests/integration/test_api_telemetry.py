"""What the console reads of the data (`/v1/controllers/{mac}/telemetry`, `/v1/activity`) and
who a token is (`/v1/me`), against the real database through the api's own login, so the
grants of migration 0016 (read-only telemetry) are proven too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from f2pipe.seed import seed_demo
from f2pipe_api.tokens import Role
from tests.integration.apikit import MAC, Api, problem

pytestmark = [pytest.mark.integration, pytest.mark.database]


@pytest.fixture
def wired(api: Api) -> tuple[Api, int]:
    """A controller with an environmental sensor on J3/sensor-1; the sensor's device id."""
    seed_demo(api.conninfo, 0)
    api.register()
    op = api.as_(Role.operator)
    base = f"/v1/controllers/{MAC}/connectors/J3"
    assert api.http.put(base, json={"mode": "sensor-mode"}, headers=op).status_code == 201
    pin = {"device_name": "Boiler", "template": "environmental-sensor-v1"}
    r = api.http.put(f"{base}/pins/sensor-1", headers=op, json=pin)
    assert r.status_code == 201, r.text
    return api, int(r.json()["device"]["id"])


def datapoint_ids(api: Api) -> dict[str, int]:
    rows = api.sql("""SELECT dp.key, dp.id FROM registry.datapoints dp
                      JOIN registry.device_templates t ON t.id = dp.template_id
                      WHERE t.key = 'environmental-sensor-v1'""")  # fmt: skip
    return {key: dp for key, dp in rows}


def store(api: Api, device: int, rows: list[tuple[datetime, int, float]]) -> None:
    with psycopg.connect(api.conninfo, autocommit=True) as conn:
        conn.cursor().executemany(
            "INSERT INTO telemetry.readings (timestamp, device_id, datapoint_id, value) "
            "VALUES (%s, %s, %s, %s)", [(t, device, dp, v) for t, dp, v in rows])  # fmt: skip


def telemetry(api: Api, **query: Any) -> dict[str, Any]:
    r = api.http.get(f"/v1/controllers/{MAC}/telemetry", params=query,
                     headers=api.as_(Role.viewer))  # fmt: skip
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_me_names_the_token_and_its_role(api: Api) -> None:
    for role in Role:
        r = api.http.get("/v1/me", headers=api.as_(role))
        assert r.status_code == 200, r.text
        assert r.json()["role"] == role.value
    problem(api.http.get("/v1/me"), 401, "missing_token")


def test_telemetry_has_the_newest_value_by_device_time_a_bucketed_hour_and_the_rate(
    wired: tuple[Api, int],
) -> None:
    api, device = wired
    dp = datapoint_ids(api)
    now = datetime.now(UTC).replace(microsecond=0)
    old = now - timedelta(days=3)  # outside the window: the newest value all the same
    store(api, device, [(old, dp["co2"], 400.0)])
    # Two readings in one 10 s bucket (averaged), one 5 min ago, and an older one stored last.
    bucket = datetime.fromtimestamp(now.timestamp() // 10 * 10 - 30, UTC)
    store(api, device, [(bucket, dp["temperature"], 20.0),
                        (bucket + timedelta(seconds=1), dp["temperature"], 22.0),
                        (now - timedelta(minutes=5), dp["temperature"], 25.0)])  # fmt: skip
    store(api, device, [(now - timedelta(minutes=20), dp["temperature"], 99.0)])

    body = telemetry(api, minutes=60)
    assert body["bucket_seconds"] == 10
    (controller,) = [d for d in body["devices"] if d["connector"] is None]
    assert controller["name"]
    assert controller["component"] is None
    (sensor,) = [d for d in body["devices"] if d["id"] == device]
    assert (sensor["connector"], sensor["component"], sensor["name"]) == (
        "J3",
        "sensor-1",
        "Boiler",
    )
    points = {p["key"]: p for p in sensor["datapoints"]}
    temperature = points["temperature"]
    assert temperature["unit"] == "°C"
    assert temperature["kind"] == "number"
    assert temperature["latest"]["v"] == 22.0  # newest device time, not the last stored
    assert [p["v"] for p in temperature["series"]] == [99.0, 25.0, 21.0]
    assert points["co2"]["latest"]["v"] == 400.0
    assert points["co2"]["series"] == []
    assert points["humidity"]["latest"] is None
    # 10-minute rate: the 3 distinct (device, timestamp) messages of the last 10 minutes.
    assert body["messages_per_minute"] == pytest.approx(0.3)

    narrow = telemetry(api, minutes=10)
    (sensor,) = [d for d in narrow["devices"] if d["id"] == device]
    assert len({p["key"]: p for p in sensor["datapoints"]}["temperature"]["series"]) == 2

    r = api.http.get("/v1/activity", headers=api.as_(Role.viewer))
    assert r.status_code == 200
    (item,) = r.json()["items"]
    assert item["mac"] == MAC
    assert item["messages"] == 3


def test_state_datapoints_and_events_but_not_connectivity(wired: tuple[Api, int]) -> None:
    api, device = wired
    now = datetime.now(UTC)
    with psycopg.connect(api.conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO telemetry.events (timestamp, device_id, kind, data) VALUES "
                     "(%s, %s, 'scan', '{\"card\": \"0a1b\"}'), "
                     "(%s, %s, 'connectivity', '{\"status\": \"online\"}')",
                     (now, device, now, device))  # fmt: skip
    body = telemetry(api)
    assert [(e["kind"], e["device"], e["data"]) for e in body["events"]] == [
        ("scan", "Boiler", {"card": "0a1b"})
    ]
    assert body["messages_per_minute"] == pytest.approx(0.1)  # the scan; not the transition


def test_telemetry_of_an_unknown_controller_and_out_of_range_windows(api: Api) -> None:
    viewer = api.as_(Role.viewer)
    problem(api.http.get(f"/v1/controllers/{MAC}/telemetry", headers=viewer), 404, "unknown_mac")
    api.register()
    for minutes in (0, 24 * 60 + 1, "x"):
        r = api.http.get(f"/v1/controllers/{MAC}/telemetry?minutes={minutes}", headers=viewer)
        problem(r, 422, "invalid_request")


def test_the_api_login_reads_telemetry_and_cannot_change_it(wired: tuple[Api, int]) -> None:
    api, _device = wired
    from tests.integration.apikit import API_LOGIN

    role = API_LOGIN.user
    rows = api.sql("SELECT has_table_privilege(%s, 'telemetry.readings', 'SELECT'), "
                   "has_table_privilege(%s, 'telemetry.readings', 'INSERT'), "
                   "has_table_privilege(%s, 'telemetry.events', 'DELETE')",
                   role, role, role)  # fmt: skip
    assert rows == [(True, False, False)]
