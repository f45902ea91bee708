"""The registry through the api, against the real PostgreSQL: device types, templates with
their datapoints, connectors, pins and claim-code rotation; every refusal a problem with its
reason (never a 500, never the value sent), every change one audit row."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import psycopg
import pytest

from f2pipe.seed import seed_demo
from f2pipe_api.registry_store import refusals
from f2pipe_api.tokens import Role
from f2pipe_shared.claimcodes import verify_claim_code
from f2pipe_shared.problems import ProblemError
from tests.integration.apikit import MAC, Api, problem

# Not `database`: the registry's tables and queries are the same on either storage engine,
# so the plain-PostgreSQL pass (make test) does not run them again.
pytestmark = pytest.mark.integration

ENV: dict[str, Any] = {
    "key": "env-v2",
    "device_type": "environmental-sensor",
    "name": "Temperature and humidity",
    "frame_format": "modbus_rtu",
    "verify_crc": True,
    "modbus_register_count": 2,
    "datapoints": [
        {"key": "temperature", "label": "Temperature", "unit": "°C", "offset": 0,
         "encoding": "int16", "decimals": 2},
        {"key": "humidity", "label": "Humidity", "unit": "%", "offset": 2,
         "encoding": "uint16", "decimals": 2, "chart_min": 0, "chart_max": 100},
    ],
}  # fmt: skip
PINS = f"/v1/controllers/{MAC}/connectors"


@pytest.fixture
def seeded(api: Api) -> Api:
    seed_demo(api.conninfo, 0)  # the reference data: device types, templates, datapoints
    return api


def audit(api: Api, target: str) -> list[dict[str, Any]]:
    r = api.http.get(f"/v1/audit?target={target}", headers=api.as_(Role.admin))
    items: list[dict[str, Any]] = r.json()["items"]
    return items


# -- device types ---------------------------------------------------------------------------


def test_device_types_crud_and_audit(seeded: Api) -> None:
    api, op = seeded, seeded.as_(Role.operator)
    body = {"key": "water-meter", "name": "Water meter", "component": "sensor"}
    r = api.http.post("/v1/device-types", json=body, headers=op)
    assert r.status_code == 201, r.text
    assert r.json()["mode"] == "sensor-mode"  # follows from the component
    problem(api.http.post("/v1/device-types", json=body, headers=op), 409, "key_taken")
    viewer = api.as_(Role.viewer)
    page = api.http.get("/v1/device-types?mode=sensor-mode&limit=2", headers=viewer).json()
    assert page["total"] == 3
    assert [t["key"] for t in page["items"]] == ["environmental-sensor", "power-monitor"]
    found = api.http.get("/v1/device-types?q=WATER", headers=viewer).json()
    assert [t["key"] for t in found["items"]] == ["water-meter"]
    assert api.http.get("/v1/device-types?component=siren", headers=viewer).json()["total"] == 1
    r = api.http.patch("/v1/device-types/water-meter", json={"description": "DN20"}, headers=op)
    assert r.json()["description"] == "DN20"
    problem(api.http.patch("/v1/device-types/water-meter", json={"name": None}, headers=op),
            422, "invalid_request")  # fmt: skip
    problem(api.http.patch("/v1/device-types/water-meter", json={"component": "siren"},
                           headers=op), 422, "invalid_request")  # fmt: skip
    admin = api.as_(Role.admin)
    problem(api.http.delete("/v1/device-types/environmental-sensor", headers=admin), 409, "in_use")
    assert api.http.delete("/v1/device-types/water-meter", headers=admin).status_code == 204
    problem(api.http.get("/v1/device-types/water-meter", headers=viewer), 404,
            "unknown_device_type")  # fmt: skip
    problem(api.http.delete("/v1/device-types/water-meter", headers=admin), 404,
            "unknown_device_type")  # fmt: skip
    actions = [e["action"] for e in audit(api, "device_type:water-meter")]
    assert actions == ["device_type.delete", "device_type.update", "device_type.create"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"key": "x", "name": "x", "is_controller": True, "component": "sensor"}, "form_mismatch"),
        ({"key": "x", "name": "x"}, "form_mismatch"),
        ({"key": "x", "name": "x", "component": "siren", "mode": "sensor-mode"}, "wrong_mode"),
        ({"key": "x", "name": "x", "component": "lamp"}, "invalid_request"),
        ({"key": "Bad Key<script>", "name": "x", "component": "siren"}, "invalid_request"),
        ({"key": "x", "name": "", "component": "siren"}, "invalid_request"),
        ({"key": "x", "name": "x", "component": "siren", "extra": 1}, "invalid_request"),
    ],
)
def test_a_bad_device_type_is_refused(api: Api, body: dict[str, Any], reason: str) -> None:
    r = api.http.post("/v1/device-types", json=body, headers=api.as_(Role.operator))
    problem(r, 422, reason)
    assert "script" not in r.text
    assert api.sql("SELECT count(*) FROM registry.device_types") == [(0,)]


# -- templates ------------------------------------------------------------------------------


def test_templates_crud_keeps_datapoint_ids_and_audits(seeded: Api) -> None:
    api, op, viewer = seeded, seeded.as_(Role.operator), seeded.as_(Role.viewer)
    r = api.http.post("/v1/templates", json=ENV, headers=op)
    assert r.status_code == 201, r.text
    created = r.json()
    assert [(d["key"], d["length"], d["sort_order"]) for d in created["datapoints"]] == [
        ("temperature", 2, 1), ("humidity", 2, 2)]  # fmt: skip
    problem(api.http.post("/v1/templates", json=ENV, headers=op), 409, "key_taken")
    ids = {d["key"]: d["id"] for d in created["datapoints"]}

    listed = api.http.get("/v1/templates?device_type=environmental-sensor", headers=viewer).json()
    assert [t["key"] for t in listed["items"]] == ["env-v2", "environmental-sensor-v1"]
    paged = api.http.get("/v1/templates?frame_format=modbus_rtu&limit=1&offset=1",
                         headers=viewer).json()  # fmt: skip
    assert (paged["total"], [t["key"] for t in paged["items"]]) == (3, ["environmental-sensor-v1"])
    assert api.http.get("/v1/templates?q=v2", headers=viewer).json()["total"] == 1

    replaced = copy.deepcopy({k: v for k, v in ENV.items() if k != "key"})
    replaced["datapoints"][0]["decimals"] = 1
    replaced["datapoints"] = [replaced["datapoints"][0]]  # humidity goes
    r = api.http.put("/v1/templates/env-v2", json=replaced, headers=op)
    assert r.status_code == 200, r.text
    (temperature,) = r.json()["datapoints"]
    assert (temperature["id"], temperature["decimals"]) == (ids["temperature"], 1)
    got = api.http.get("/v1/templates/env-v2", headers=viewer).json()
    assert got["datapoints"] == r.json()["datapoints"]
    problem(api.http.put("/v1/templates/nope", json=replaced, headers=op), 404, "unknown_template")

    entries = audit(api, "template:env-v2")
    assert [e["action"] for e in entries] == ["template.update", "template.create"]
    assert len(entries[0]["before"]["datapoints"]) == 2
    assert entries[0]["after"]["datapoints"][0]["decimals"] == 1
    admin = api.as_(Role.admin)
    assert api.http.delete("/v1/templates/env-v2", headers=admin).status_code == 204
    problem(api.http.get("/v1/templates/env-v2", headers=viewer), 404, "unknown_template")
    assert api.sql("SELECT count(*) FROM registry.datapoints WHERE id = %s",
                   ids["temperature"]) == [(0,)]  # fmt: skip


def _use(api: Api, template: str) -> None:
    """Puts a device of `template` on J3/sensor-1 of a new controller."""
    api.register()
    api.http.put(f"{PINS}/J3", json={"mode": "sensor-mode"}, headers=api.as_(Role.operator))
    r = api.http.put(f"{PINS}/J3/pins/sensor-1", json={"device_name": "d", "template": template},
                     headers=api.as_(Role.operator))  # fmt: skip
    assert r.status_code == 201, r.text


def test_a_template_in_use_is_not_deleted_nor_moved_to_another_type(seeded: Api) -> None:
    api = seeded
    _use(api, "environmental-sensor-v1")
    r = api.http.delete("/v1/templates/environmental-sensor-v1", headers=api.as_(Role.admin))
    problem(r, 409, "in_use")
    body = api.http.get("/v1/templates/environmental-sensor-v1", headers=api.as_(Role.viewer))
    moved = {k: v for k, v in body.json().items()
             if k in ("name", "frame_format", "verify_crc", "modbus_register_count")}  # fmt: skip
    moved["device_type"] = "power-monitor"
    moved["datapoints"] = [{"key": "v", "label": "V", "offset": 0, "encoding": "float32"}]
    r = api.http.put("/v1/templates/environmental-sensor-v1", json=moved,
                     headers=api.as_(Role.operator))  # fmt: skip
    problem(r, 409, "in_use")


def _dp(**changes: Any) -> dict[str, Any]:
    return {**ENV, "datapoints": [{**ENV["datapoints"][0], **changes}]}


DOORS: dict[str, Any] = {"key": "doors-v2", "device_type": "door-sensor-pair", "name": "Doors"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_dp(offset=3), "frame_overflow"),  # ends at byte 5 of the 4 the registers carry
        ({**_dp(offset=249), "modbus_register_count": None}, "frame_overflow"),
        (
            {
                **_dp(offset=255, encoding="uint16"),
                "frame_format": "raw",
                "verify_crc": False,
                "modbus_register_count": None,
            },
            "frame_overflow",
        ),
        (_dp(encoding="int24"), "invalid_request"),
        (_dp(byte_order="middle-endian"), "invalid_request"),
        (_dp(length=4), "bad_datapoint"),
        (_dp(byte_order="word_swapped"), "bad_datapoint"),
        (_dp(field="status"), "bad_datapoint"),
        (_dp(offset=None), "bad_datapoint"),
        (_dp(offset=-1), "invalid_request"),
        (_dp(decimals=10), "invalid_request"),
        (_dp(key="Temp!"), "invalid_request"),
        (_dp(chart_color="red"), "invalid_request"),
        ({**ENV, "datapoints": [ENV["datapoints"][0]] * 2}, "bad_datapoint"),
        ({**ENV, "frame_format": "raw"}, "form_mismatch"),  # verify_crc and modbus_* need RTU
        (
            {**ENV, "frame_format": None, "verify_crc": False, "modbus_register_count": None},
            "form_mismatch",
        ),
        (
            {**DOORS, "datapoints": [{"key": "x", "label": "x", "field": "door-sensor-3"}]},
            "form_mismatch",
        ),
        (
            {**DOORS, "frame_format": "raw", "datapoints": [_dp()["datapoints"][0]]},
            "form_mismatch",
        ),
        ({**ENV, "device_type": "controller"}, "form_mismatch"),
        ({**ENV, "device_type": "no-such-type"}, "unknown_reference"),
        (_dp(chart_min=5, chart_max=1), "constraint_violation"),  # the database's CHECK
        ({**ENV, "datapoints": [_dp()["datapoints"][0]] * 65}, "invalid_request"),
    ],
)
def test_a_bad_template_is_refused_and_changes_nothing(
    seeded: Api, body: dict[str, Any], reason: str
) -> None:
    counts = (
        "SELECT (SELECT count(*) FROM registry.device_templates), count(*) FROM registry.audit_log"
    )
    before = seeded.sql(counts)
    r = seeded.http.post("/v1/templates", json=body, headers=seeded.as_(Role.operator))
    problem(r, 422, reason)
    assert seeded.sql(counts) == before


def test_state_templates_name_the_fields_their_device_sends(seeded: Api) -> None:
    body = {**DOORS, "datapoints": [{"key": "door-1", "label": "Door 1", "field": "door-sensor-1"}]}
    r = seeded.http.post("/v1/templates", json=body, headers=seeded.as_(Role.operator))
    assert r.status_code == 201, r.text
    assert r.json()["datapoints"][0]["offset"] is None


# -- connectors and pins --------------------------------------------------------------------


def test_connectors_and_pins(seeded: Api) -> None:
    api, viewer, op, admin = seeded, *(seeded.as_(r) for r in Role)
    api.register()
    r = api.http.put(f"{PINS}/J3", json={"mode": "sensor-mode"}, headers=op)
    assert (r.status_code, r.json()) == (201, {"name": "J3", "mode": "sensor-mode", "pins": []})
    assert api.http.put(f"{PINS}/J3", json={"mode": "sensor-mode"}, headers=op).status_code == 200
    pin = f"{PINS}/J3/pins/sensor-1"
    r = api.http.put(pin, json={"device_name": "Boiler", "template": "environmental-sensor-v1"},
                     headers=op)  # fmt: skip
    assert r.status_code == 201, r.text
    device = r.json()["device"]
    assert (r.json()["position"], device["device_type"]) == (1, "environmental-sensor")

    # Same name: the device is re-pointed (same id); another name: a new device, the old kept.
    r = api.http.put(pin, json={"device_name": "Boiler", "template": "power-monitor-v1"},
                     headers=op)  # fmt: skip
    assert r.status_code == 200
    assert r.json()["device"] == {**device, "device_type": "power-monitor",
                                  "template": "power-monitor-v1"}  # fmt: skip
    r = api.http.put(pin, json={"device_name": "Meter 2", "template": "power-monitor-v1"},
                     headers=op)  # fmt: skip
    assert r.json()["device"]["id"] != device["id"]
    assert api.sql("SELECT name FROM registry.devices WHERE id = %s", device["id"]) == [("Boiler",)]

    problem(api.http.put(f"{PINS}/J3", json={"mode": "alarm-mode"}, headers=op), 409,
            "mode_conflict")  # fmt: skip
    listed = api.http.get(PINS, headers=viewer).json()
    assert [(c["name"], [p["component"] for p in c["pins"]]) for c in listed] == [
        ("J3", ["sensor-1"])]  # fmt: skip
    assert api.http.get(pin, headers=viewer).json()["device"]["name"] == "Meter 2"
    assert api.http.delete(pin, headers=admin).status_code == 204
    problem(api.http.delete(pin, headers=admin), 404, "unknown_pin")
    problem(api.http.get(pin, headers=viewer), 404, "unknown_pin")
    assert api.http.put(f"{PINS}/J3", json={"mode": "alarm-mode"}, headers=op).status_code == 200
    assert api.http.delete(f"{PINS}/J3", headers=admin).status_code == 204
    problem(api.http.get(f"{PINS}/J3", headers=viewer), 404, "unknown_connector")
    # Every device that ever sat there stays, as the readings' history.
    assert api.sql("SELECT count(*) FROM registry.devices WHERE mac IS NULL") == [(2,)]
    entries = api.http.get("/v1/audit?limit=50", headers=admin).json()["items"]
    actions = [e["action"] for e in entries if not e["action"].startswith("token.")]
    assert actions == ["connector.delete", "connector.update", "pin.delete", "pin.set", "pin.set",
                       "pin.set", "connector.create", "controller.create"]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/v1/controllers/aabbccddee99/connectors/J3/pins/sensor-1", None, 404, "unknown_mac"),
        (f"{PINS}/J4/pins/sensor-1", None, 404, "unknown_connector"),
        (f"{PINS}/J3/pins/sensor-1", {"template": "door-sensor-pair-v1"}, 422, "wrong_component"),
        (f"{PINS}/J1/pins/sensor-1", None, 422, "wrong_mode"),
        (f"{PINS}/J3/pins/sensor-1", {"template": "no-such"}, 422, "unknown_reference"),
        (f"{PINS}/J3/pins/sensor-7", None, 422, "invalid_request"),
        (f"{PINS}/J3/pins/door-sensors", None, 422, "wrong_component"),
        (f"{PINS}/J5/pins/sensor-1", None, 422, "invalid_request"),
        ("/v1/controllers/not-a-mac/connectors/J3/pins/sensor-1", None, 422, "invalid_mac"),
        (f"{PINS}/J3/pins/sensor-1", {"device_name": ""}, 422, "invalid_request"),
        (f"{PINS}/J3/pins/sensor-1", {"device_id": 3}, 422, "invalid_request"),
    ],
)
def test_a_bad_pin_is_refused_and_changes_nothing(
    seeded: Api, path: str, body: dict[str, Any] | None, status: int, reason: str
) -> None:
    api, op = seeded, seeded.as_(Role.operator)
    api.register()
    api.http.put(f"{PINS}/J1", json={"mode": "access-control-mode"}, headers=op)
    api.http.put(f"{PINS}/J3", json={"mode": "sensor-mode"}, headers=op)
    sent = {"device_name": "Boiler", "template": "environmental-sensor-v1", **(body or {})}
    problem(api.http.put(path, json=sent, headers=op), status, reason)
    assert api.sql("SELECT count(*) FROM registry.pins") == [(0,)]
    assert api.sql("SELECT count(*) FROM registry.devices WHERE mac IS NULL") == [(0,)]


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/v1/controllers/aabbccddee99/connectors/J1", {"mode": "alarm-mode"}, 404, "unknown_mac"),
        (f"{PINS}/J1", {"mode": "party-mode"}, 422, "invalid_request"),
        (f"{PINS}/J0", {"mode": "alarm-mode"}, 422, "invalid_request"),
        (f"{PINS}/J1", {}, 422, "invalid_request"),
    ],
)
def test_a_bad_connector_is_refused(
    api: Api, path: str, body: dict[str, Any], status: int, reason: str
) -> None:
    api.register()
    problem(api.http.put(path, json=body, headers=api.as_(Role.operator)), status, reason)
    assert api.sql("SELECT count(*) FROM registry.connectors") == [(0,)]


def test_database_refusals_name_the_rule_never_the_value(migrated: str) -> None:
    """The backstop: a trigger's message quotes the name sent; the problem does not."""

    async def insert() -> None:
        async with (
            refusals(),
            await psycopg.AsyncConnection.connect(migrated, autocommit=True) as conn,
        ):
            await conn.execute("INSERT INTO registry.device_types (key, name, is_controller) "
                               "VALUES ('controller', 'c', true)")  # fmt: skip
            await conn.execute(
                "INSERT INTO registry.devices (device_type_id, name) "
                "SELECT id, 'secret<script>' FROM registry.device_types"
            )

    with pytest.raises(ProblemError) as caught:
        asyncio.run(insert())
    assert caught.value.reason == "constraint_violation"
    assert "secret" not in caught.value.detail
    assert "trigger" in caught.value.detail


# -- claim codes ----------------------------------------------------------------------------


def test_rotating_a_claim_code_returns_it_once_and_stores_its_hash(api: Api) -> None:
    old = api.register()["claim_code"]
    r = api.http.post(f"/v1/controllers/{MAC}/claim-code", headers=api.as_(Role.operator))
    assert r.status_code == 200, r.text
    new = r.json()["claim_code"]
    assert (r.json()["mac"], new != old) == (MAC, True)
    ((stored,),) = api.sql("SELECT claim_code_hash FROM registry.devices WHERE mac = %s", MAC)
    assert verify_claim_code(new, stored)
    assert not verify_claim_code(old, stored)
    (row,) = audit(api, f"controller:{MAC}")[:1]
    assert row["action"] == "controller.rotate_claim_code"
    assert row["after"]["claim_code_pending"] is True
    dumped = str(api.sql("SELECT before, after FROM registry.audit_log"))
    assert new not in dumped
    assert stored not in dumped
    r = api.http.post("/v1/controllers/aabbccddee99/claim-code", headers=api.as_(Role.operator))
    problem(r, 404, "unknown_mac")
