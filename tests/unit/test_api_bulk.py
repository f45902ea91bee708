"""The bulk import's file formats and rules (bulk.py, no database), and BodyLimit's per-path
limits: every bad input has its reason, its line and a detail that never repeats it."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from f2pipe_api import bulk
from f2pipe_api.problems import PROBLEMS
from f2pipe_shared.bodylimit import BodyLimit

HEADER = ",".join(bulk.COLUMNS)
CATALOG: bulk.Catalog = {
    "env-v1": bulk.Template(1, 2, "sensor", "sensor-mode"),
    "door-v1": bulk.Template(2, 3, "door-sensors", "access-control-mode"),
    "ctl-v1": bulk.Template(3, 1, None, None),
}
GOOD = "aabbccddee01,Door,site,,J3,sensor-mode,sensor-1,env-v1,"


def check(text: str | bytes, catalog: bulk.Catalog = CATALOG) -> bulk.Plan:
    data = text.encode() if isinstance(text, str) else text
    return bulk.validate(bulk.parse_csv(data), catalog)


def reasons(plan: bulk.Plan) -> list[tuple[int | None, str]]:
    return [(e.line, e.reason) for e in plan.errors.items]


def test_a_good_file_becomes_controllers_connectors_and_pins() -> None:
    plan = check(f"\ufeff{HEADER}\n{GOOD}\n"
                 "aabbccddee01,Door,site,,J3,sensor-mode,sensor-2,env-v1,Boiler\n"
                 "aabbccddee01,Door,site,,J1,access-control-mode,,,\n"
                 "AA:BB:CC:DD:EE:02,Other,,,,,,,\n")  # fmt: skip
    assert not plan.errors
    assert plan.rows == 4
    first, second = plan.controllers
    assert (first.mac, first.site, first.notes) == ("aabbccddee01", "site", None)
    assert list(first.connectors) == ["J3", "J1"]
    pins = first.connectors["J3"].pins
    assert pins["sensor-1"].device_name == "f2-aabbccddee01/J3/sensor-1"
    assert pins["sensor-2"].device_name == "Boiler"
    assert (pins["sensor-1"].template_id, pins["sensor-1"].type_id) == (1, 2)
    assert second.mac == "aabbccddee02"
    assert second.connectors == {}


def test_columns_may_come_in_any_order_and_only_mac_and_name_are_required() -> None:
    plan = check("name,mac\nDoor,aabbccddee01\n")
    assert not plan.errors
    assert plan.controllers[0].name == "Door"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (HEADER + ",colour", "unknown_column"),
        (HEADER + ",mac", "duplicate_column"),
        ("mac,site", "missing_column"),
        ("", "empty_file"),
    ],
)
def test_a_bad_header_is_one_error_on_line_1(header: str, reason: str) -> None:
    plan = check(f"{header}\n{GOOD}\n")
    assert reasons(plan) == [(1, reason)]
    assert plan.controllers == []


@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [
        ("aabbccddee0g,Door,,,,,,,", "mac", "invalid_mac"),
        ("aa:bb:cc-dd:ee:01,Door,,,,,,,", "mac", "invalid_mac"),
        ("aabbccddee01,,,,,,,,", "name", "missing_value"),
        ("aabbccddee01,=cmd|' /C calc'!A0,,,,,,,", "name", "formula_like"),
        ("aabbccddee01,Door,+1,,,,,,", "site", "formula_like"),
        ("aabbccddee01,Door,,@SUM(A1),,,,,", "notes", "formula_like"),
        ("aabbccddee01,Door,,,J3,sensor-mode,sensor-1,env-v1,-2+3", "device_name",
         "formula_like"),
        ("aabbccddee01,Door,,\"\tx\",,,,,", "notes", "formula_like"),
        ("aabbccddee01,Do\x1bor,,,,,,,", "name", "control_character"),
        ("aabbccddee01," + "x" * 201 + ",,,,,,,", "name", "too_long"),
        ("aabbccddee01,Door,,,J5,sensor-mode,,,", "connector", "unknown_connector"),
        ("aabbccddee01,Door,,,j3,sensor-mode,,,", "connector", "unknown_connector"),
        ("aabbccddee01,Door,,,J3,modbus-mode,,,", "mode", "unknown_mode"),
        ("aabbccddee01,Door,,,,sensor-mode,,,", "connector", "missing_value"),
        ("aabbccddee01,Door,,,J3,sensor-mode,,env-v1,", "component", "missing_value"),
        ("aabbccddee01,Door,,,J3,sensor-mode,sensor-7,env-v1,", "component",
         "invalid_component"),
        ("aabbccddee01,Door,,,J3,sensor-mode,sensor-1,,", "template", "missing_value"),
        ("aabbccddee01,Door,,,J3,sensor-mode,sensor-1,nope-v1,", "template",
         "unknown_template"),
        ("aabbccddee01,Door,,,J3,sensor-mode,sensor-1,ctl-v1,", "template",
         "controller_template"),
        ("aabbccddee01,Door,,,J3,sensor-mode,reader-1,env-v1,", "component",
         "component_mismatch"),
        ("aabbccddee01,Door,,,J3,sensor-mode,door-sensors,door-v1,", "mode", "mode_mismatch"),
    ],
)  # fmt: skip
def test_each_bad_value_has_its_reason_line_and_column(row: str, column: str, reason: str) -> None:
    plan = check(f"{HEADER}\n{GOOD.replace('ee01', 'ee09')}\n{row}\n")
    assert [(e.line, e.loc, e.reason) for e in plan.errors.items] == [(3, (column,), reason)]
    # The bad controller is left out of the plan, the good one stays.
    assert [c.mac for c in plan.controllers] == ["aabbccddee09"]
    detail = plan.errors.items[0].detail
    assert "cmd" not in detail
    assert "nope" not in detail


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        ([GOOD, "aabbccddee02,Other,,,,,,,", GOOD.replace("sensor-1", "sensor-2")],
         "duplicate_mac"),
        ([GOOD, "aabbccddee01,Renamed,site,,J1,access-control-mode,,,"], "controller_mismatch"),
        ([GOOD, "aabbccddee01,Door,site,,J3,alarm-mode,,,"], "connector_mismatch"),
        ([GOOD, GOOD], "duplicate_pin"),
        ([GOOD, "AA-BB-CC-DD-EE-01,Door,site,,J3,sensor-mode,sensor-1,env-v1,x"],
         "duplicate_pin"),
    ],
)  # fmt: skip
def test_rows_of_one_controller_must_agree(rows: list[str], reason: str) -> None:
    plan = check(HEADER + "\n" + "\n".join(rows) + "\n")
    assert reasons(plan) == [(len(rows) + 1, reason)]


def test_every_bad_row_is_reported_up_to_the_limit_with_the_total() -> None:
    bad = "".join(f"aabbccddee{i:02x},=x,,,,,,,\n" for i in range(1, 6))
    plan = check(f"{HEADER}\n{bad}")
    assert [line for line, _ in reasons(plan)] == [2, 3, 4, 5, 6]
    errors = bulk.Errors(limit=2)
    for i in range(5):
        errors.add(i, (), "x", "y")
    assert (len(errors.items), errors.total) == (2, 5)


def test_line_numbers_count_quoted_newlines() -> None:
    plan = check(f'{HEADER}\naabbccddee01,Door,,"a\nb\nc",,,,,\naabbccddee02,=x,,,,,,,\n')
    assert reasons(plan) == [(5, "formula_like")]
    assert plan.controllers[0].notes == "a\nb\nc"


@pytest.mark.parametrize(
    ("data", "line", "reason"),
    [
        (f"{HEADER}\n{GOOD}\n".encode() + b"aabbccddee02,T\xe9st,,,,,,,\n", 3,
         "invalid_encoding"),
        (f'{HEADER}\n{GOOD}\naabbccddee02,"Door,,,,,,,\n'.encode(), 3, "malformed_csv"),
        (f"{HEADER}\naabbccddee02,Door,,\n".encode(), 2, "wrong_field_count"),
    ],
)  # fmt: skip
def test_a_malformed_file(data: bytes, line: int, reason: str) -> None:
    assert reasons(check(data)) == [(line, reason)]


def test_too_many_rows() -> None:
    data = f"{HEADER}\n" + "".join(f"aabbccddee{i:02x},D,,,,,,,\n" for i in range(1, 5))
    parsed = bulk.parse_csv(data.encode(), max_rows=3)
    assert [(e.line, e.reason) for e in parsed.errors.items] == [(5, "too_many_rows")]
    assert parsed.rows == []
    doc = {"controllers": [{"mac": f"aabbccddee{i:02x}", "name": "D"} for i in range(1, 5)]}
    parsed = bulk.parse_json(json.dumps(doc).encode(), max_rows=3)
    assert [e.reason for e in parsed.errors.items] == ["too_many_rows"]


def test_json_meets_the_same_rules_with_locations() -> None:
    doc = {"controllers": [
        {"mac": "aabbccddee01", "name": "Door", "connectors": [
            {"name": "J3", "mode": "sensor-mode", "pins": [
                {"component": "sensor-1", "template": "env-v1"},
                {"component": "reader-1", "template": "env-v1"}]},
            {"name": "J3", "mode": "sensor-mode", "pins": []}]},
    ]}  # fmt: skip
    plan = bulk.validate(bulk.parse_json(json.dumps(doc).encode()), CATALOG)
    assert [(e.line, e.loc, e.reason) for e in plan.errors.items] == [
        (None, ("controllers", 0, "connectors", 1, "name"), "duplicate_connector"),
        (None, ("controllers", 0, "connectors", 0, "pins", 1, "component"),
         "component_mismatch"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"{", "invalid_json"), (b'{"controllers": [{"mac": "x"}]}', "invalid_field"),
     (b'{"controllers": [], "=cmd": 1}', "invalid_field")],
)  # fmt: skip
def test_json_that_does_not_match_the_schema(body: bytes, reason: str) -> None:
    errors = bulk.parse_json(body).errors.items
    assert errors
    assert {e.reason for e in errors} == {reason}
    assert all("=cmd" not in str(e.loc) for e in errors)


def test_the_export_reads_back_as_the_same_plan() -> None:
    rows = [
        bulk.ExportRow("aabbccddee01", "Door", "s", "n, \"q\"", "J1", "access-control-mode",
                       "door-sensors", "door-v1", "Front"),
        bulk.ExportRow("aabbccddee01", "Door", "s", "n, \"q\"", "J3", "sensor-mode", None,
                       None, None),
        bulk.ExportRow("aabbccddee02", "Bare", None, None, None, None, None, None, None),
    ]  # fmt: skip
    from_csv = check(bulk.export_csv(rows))
    from_json = bulk.validate(
        bulk.parse_json(json.dumps(bulk.export_document(rows)).encode()), CATALOG
    )
    assert not from_csv.errors
    assert not from_json.errors
    assert from_csv.controllers == [
        bulk.Controller(c.line, c.mac, c.name, c.site, c.notes, c.connectors)
        for c in from_csv.controllers
    ]
    strip = [(c.mac, c.name, c.site, c.notes, {k: (v.mode, sorted(v.pins)) for k, v in
              c.connectors.items()}) for c in from_csv.controllers]  # fmt: skip
    assert strip == [(c.mac, c.name, c.site, c.notes, {k: (v.mode, sorted(v.pins)) for k, v in
                      c.connectors.items()}) for c in from_json.controllers]  # fmt: skip
    assert bulk.claim_codes_csv([("aabbccddee01", "AAAA-BBBB")]) == (
        "mac,claim_code\naabbccddee01,AAAA-BBBB\n"
    )


# -- BodyLimit: one limit, and per-path overrides ------------------------------------------


def _limited_app() -> TestClient:
    app = FastAPI()

    @app.post("/small")
    @app.post("/big")
    async def echo(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    app.add_middleware(
        BodyLimit, max_bytes=100, problems=PROBLEMS, hint="small.", overrides={"/big": 1000}
    )
    PROBLEMS.install_handlers(app)
    return TestClient(app)


@pytest.mark.parametrize("chunked", [False, True])
def test_body_limit_overrides_hold_for_their_path_only(chunked: bool) -> None:
    http = _limited_app()

    def post(path: str, size: int) -> int:
        body = b"x" * size
        content = iter([body[:50], body[50:]]) if chunked else body
        return int(http.post(path, content=content).status_code)

    assert post("/small", 100) == 200
    assert post("/small", 101) == 413
    assert post("/big", 1000) == 200
    assert post("/big", 1001) == 413
    refusal = http.post("/big", content=b"x" * 1001).json()
    assert "1000 bytes" in refusal["detail"]
    assert refusal["reason"] == "body_too_large"
