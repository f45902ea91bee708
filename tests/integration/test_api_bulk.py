"""Bulk import and export (/v1/import, /v1/export) against the real PostgreSQL: dry run,
apply, idempotence, rollback on a bad row, claim codes, the audit row, the round trip, and
the import's own body limit."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from f2pipe.seed import seed_demo
from f2pipe_api.bulk import COLUMNS, MAX_BODY_BYTES
from f2pipe_api.tokens import Role
from f2pipe_shared.claimcodes import verify_claim_code
from tests.integration.apikit import Api, problem

# Not `database`: the registry's tables and queries are the same on either storage engine,
# so the plain-PostgreSQL pass (make test) does not run them again.
pytestmark = pytest.mark.integration

HEADER = ",".join(COLUMNS)
CSV = {"Content-Type": "text/csv"}
FILE = f"""{HEADER}
aa:bb:cc:00:00:01,Door 1,berlin-1,,J1,access-control-mode,door-sensors,door-sensor-pair-v1,
aa:bb:cc:00:00:01,Door 1,berlin-1,,J3,sensor-mode,sensor-1,environmental-sensor-v1,Cold room
aa:bb:cc:00:00:01,Door 1,berlin-1,,J4,sensor-mode,,,
aabbcc000002,Door 2,,"two lines
of notes",,,,,
"""


@pytest.fixture
def seeded(api: Api) -> Api:
    seed_demo(api.conninfo, 0)  # the demo's device types and templates, no controller
    return api


def _import(api: Api, body: str | bytes, *, dry_run: bool, role: Role = Role.operator,
            headers: dict[str, str] | None = None) -> Any:  # fmt: skip
    return api.http.post(
        f"/v1/import?dry_run={str(dry_run).lower()}",
        content=body,
        headers={**api.as_(role), **(headers or CSV)},
    )


def _registry(api: Api) -> list[tuple[Any, ...]]:
    return api.sql(
        """SELECT d.mac, d.name, d.site, d.notes, c.name, c.mode, p.component, pd.name,
                  pd.template_id, d.claim_code_hash IS NOT NULL
           FROM registry.devices d LEFT JOIN registry.connectors c ON c.controller_id = d.id
           LEFT JOIN registry.pins p ON p.connector_id = c.id
           LEFT JOIN registry.devices pd ON pd.id = p.device_id
           WHERE d.mac IS NOT NULL ORDER BY 1, 5, 7"""
    )


def test_dry_run_counts_and_changes_nothing(seeded: Api) -> None:
    r = _import(seeded, FILE, dry_run=True)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["dry_run"] is True
    assert report["valid"] is True
    assert report["rows"] == 4
    assert report["controllers"] == {"created": 2, "changed": 0, "unchanged": 0}
    assert report["connectors"] == {"created": 3, "changed": 0, "unchanged": 0}
    assert report["pins"] == {"created": 2, "changed": 0, "unchanged": 0}
    assert report["claim_codes_csv"] is None
    assert _registry(seeded) == []
    assert seeded.sql("SELECT count(*) FROM registry.audit_log WHERE action = 'import.apply'") == [
        (0,)
    ]


def test_apply_creates_returns_claim_codes_once_and_is_idempotent(seeded: Api) -> None:
    r = _import(seeded, FILE, dry_run=False)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["controllers"]["created"] == 2
    codes = dict(csv.reader(io.StringIO(report["claim_codes_csv"])))
    assert set(codes) == {"mac", "aabbcc000001", "aabbcc000002"}
    for mac in ("aabbcc000001", "aabbcc000002"):
        ((stored,),) = seeded.sql("SELECT claim_code_hash FROM registry.devices WHERE mac = %s",
                                  mac)  # fmt: skip
        assert verify_claim_code(codes[mac], stored)
    rows = _registry(seeded)
    assert rows[-1][:4] == ("aabbcc000002", "Door 2", None, "two lines\nof notes")
    assert (rows[0][4:8]) == (
        "J1",
        "access-control-mode",
        "door-sensors",
        "f2-aabbcc000001/J1/door-sensors",
    )
    again = _import(seeded, FILE, dry_run=False).json()
    for kind in ("controllers", "connectors", "pins"):
        assert again[kind]["created"] == again[kind]["changed"] == 0
    assert again["claim_codes_csv"] is None
    assert _registry(seeded) == rows
    audit = seeded.sql(
        "SELECT actor, target, after FROM registry.audit_log WHERE action = 'import.apply'"
        " ORDER BY id"
    )
    assert len(audit) == 2  # one row per import, not one per controller
    actor, target, after = audit[0]
    assert (actor, target) == ("test-operator", "import")
    assert after["controllers"] == {"created": 2, "changed": 0, "unchanged": 0}
    assert after["format"] == "csv"
    assert codes["aabbcc000001"] not in str(after)


def test_apply_changes_fields_modes_and_templates(seeded: Api) -> None:
    _import(seeded, FILE, dry_run=False)
    changed = FILE.replace("Cold room", "Freezer").replace("Door 2,,", "Door 2,paris,")
    report = _import(seeded, changed, dry_run=False).json()
    assert report["controllers"] == {"created": 0, "changed": 1, "unchanged": 1}
    assert report["pins"] == {"created": 0, "changed": 1, "unchanged": 1}
    swap = changed.replace("sensor-1,environmental-sensor-v1", "sensor-1,power-monitor-v1")
    assert _import(seeded, swap, dry_run=False).json()["pins"]["changed"] == 1
    ((type_key,),) = seeded.sql(
        """SELECT t.key FROM registry.devices d JOIN registry.device_types t
           ON t.id = d.device_type_id WHERE d.name = 'Freezer'"""
    )
    assert type_key == "power-monitor"


def test_a_bad_row_rolls_back_the_whole_apply(seeded: Api) -> None:
    bad = FILE + "aabbcc000003,Door 3,,,J3,sensor-mode,sensor-1,no-such-template,\n"
    r = _import(seeded, bad, dry_run=False)
    body = problem(r, 422, "import_invalid")
    assert body["errors"] == [
        {"loc": ["line", 7, "template"], "msg": "No template with this key is registered.",
         "type": "unknown_template"}
    ]  # fmt: skip
    assert _registry(seeded) == []
    assert seeded.sql("SELECT count(*) FROM registry.audit_log WHERE action = 'import.apply'") == [
        (0,)
    ]


def test_dry_run_reports_every_bad_row_with_its_line(seeded: Api) -> None:
    bad = (
        f"{HEADER}\n"
        "nope,A,,,,,,,\n"
        "aabbcc000001,=cmd(),,,,,,,\n"
        "aabbcc000002,B,,,J5,sensor-mode,,,\n"
        "aabbcc000003,C,,,J3,sensor-mode,door-sensors,door-sensor-pair-v1,\n"
    )
    report = _import(seeded, bad, dry_run=True).json()
    assert report["valid"] is False
    assert report["controllers"] is None
    got = [(e["line"], e["loc"], e["reason"]) for e in report["errors"]]
    assert got == [
        (2, ["mac"], "invalid_mac"),
        (3, ["name"], "formula_like"),
        (4, ["connector"], "unknown_connector"),
        (5, ["mode"], "mode_mismatch"),
    ]
    assert report["errors_total"] == 4
    assert "=cmd" not in str(report)  # a detail never repeats the value sent


def test_a_mode_change_that_strands_a_pin_is_refused(seeded: Api) -> None:
    _import(seeded, FILE, dry_run=False)
    # J1 keeps its door-sensors pin (not in this file): access-control devices on alarm-mode.
    change = f"{HEADER}\naabbcc000001,Door 1,berlin-1,,J1,alarm-mode,,,\n"
    report = _import(seeded, change, dry_run=True).json()
    assert [(e["line"], e["reason"]) for e in report["errors"]] == [(2, "mode_conflict")]
    problem(_import(seeded, change, dry_run=False), 422, "import_invalid")


def test_export_imports_back_unchanged(seeded: Api) -> None:
    seed_demo(seeded.conninfo, 3)
    _import(seeded, FILE, dry_run=False)
    viewer = seeded.as_(Role.viewer)
    exported = seeded.http.get("/v1/export?format=csv", headers=viewer)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    lines = exported.text.splitlines()
    assert lines[0] == HEADER
    assert len(list(csv.reader(io.StringIO(exported.text)))) == 1 + 3 * 12 + 4
    before = _registry(seeded)
    report = _import(seeded, exported.content, dry_run=False).json()
    for kind in ("controllers", "connectors", "pins"):
        assert report[kind]["created"] == report[kind]["changed"] == 0, report
    assert _registry(seeded) == before
    document = seeded.http.get("/v1/export?format=json", headers=viewer)
    assert len(document.json()["controllers"]) == 5
    report = _import(seeded, document.content, dry_run=False,
                     headers={"Content-Type": "application/json"}).json()  # fmt: skip
    assert report["valid"] is True
    assert report["pins"]["unchanged"] == 3 * 12 + 2, report
    assert seeded.http.get("/v1/export", headers=viewer).text == exported.text


def test_json_import_reports_locations(seeded: Api) -> None:
    pin = {"component": "sensor-7", "template": "environmental-sensor-v1"}
    connector = {"name": "J3", "mode": "sensor-mode", "pins": [pin]}
    controller: dict[str, Any] = {"mac": "aabbcc000009", "name": "J", "connectors": [connector]}
    doc = {"controllers": [controller]}
    r = seeded.http.post("/v1/import", json=doc, headers=seeded.as_(Role.operator))
    report = r.json()
    assert report["dry_run"] is True
    assert [(e["line"], e["loc"], e["reason"]) for e in report["errors"]] == [
        (None, ["controllers", 0, "connectors", 0, "pins", 0, "component"], "invalid_component")
    ]
    controller["extra"] = 1
    report = seeded.http.post("/v1/import", json=doc, headers=seeded.as_(Role.operator)).json()
    assert report["errors"][0]["reason"] == "invalid_field"


def test_unsupported_media_type(seeded: Api) -> None:
    r = _import(seeded, "x", dry_run=True, headers={"Content-Type": "text/plain"})
    problem(r, 415, "unsupported_media_type")


def test_the_import_route_alone_takes_a_large_body(seeded: Api) -> None:
    row = "aabbcc000001,Door 1,,,J4,sensor-mode,,,\n"
    big = HEADER + "\n" + row * (200 * 1024 // len(row))  # 200 KiB: over the default 64 KiB
    r = _import(seeded, big, dry_run=True)
    assert r.status_code == 200, r.text
    assert r.json()["valid"] is True
    r = seeded.http.post("/v1/controllers", content=b"{" + b" " * 70_000 + b"}",
                         headers={**seeded.as_(Role.operator),
                                  "Content-Type": "application/json"})  # fmt: skip
    problem(r, 413, "body_too_large")
    r = _import(seeded, b"x" * (MAX_BODY_BYTES + 1), dry_run=True)
    problem(r, 413, "body_too_large")
