"""`f2pipe api` against the real PostgreSQL: the app in-process (TestClient), one fresh
migrated database per test, tokens made as `f2pipe api-token create` makes them."""

from __future__ import annotations

import json

import psycopg
import pytest
from fastapi import FastAPI

from f2pipe.cli import main as cli_main
from f2pipe_api.app import PUBLIC_PATHS
from f2pipe_api.tokens import Role, token_digest
from f2pipe_shared.claimcodes import verify_claim_code
from tests.integration.apikit import MAC, Api, problem

# Not `database`: the registry's tables and queries are the same on either storage engine,
# so the plain-PostgreSQL pass (make test) does not run them again.
pytestmark = pytest.mark.integration

# -- the route table: every route needs a token and its role ---------------------------------


# The least role of every route. The test compares this table with the routes the app
# serves (its OpenAPI document is generated from app.routes), so a new route must be listed
# here, and then must refuse without a token and below its role.
MIN_ROLE = {
    ("GET", "/v1/controllers"): Role.viewer,
    ("GET", "/v1/controllers/{mac}"): Role.viewer,
    ("POST", "/v1/controllers"): Role.operator,
    ("PATCH", "/v1/controllers/{mac}"): Role.operator,
    ("DELETE", "/v1/controllers/{mac}"): Role.admin,
    ("GET", "/v1/tokens"): Role.admin,
    ("POST", "/v1/tokens"): Role.admin,
    ("DELETE", "/v1/tokens/{name}"): Role.admin,
    ("GET", "/v1/audit"): Role.admin,
    ("POST", "/v1/controllers/{mac}/claim-code"): Role.operator,
    ("GET", "/v1/device-types"): Role.viewer,
    ("GET", "/v1/device-types/{key}"): Role.viewer,
    ("POST", "/v1/device-types"): Role.operator,
    ("PATCH", "/v1/device-types/{key}"): Role.operator,
    ("DELETE", "/v1/device-types/{key}"): Role.admin,
    ("GET", "/v1/templates"): Role.viewer,
    ("GET", "/v1/templates/{key}"): Role.viewer,
    ("POST", "/v1/templates"): Role.operator,
    ("PUT", "/v1/templates/{key}"): Role.operator,
    ("DELETE", "/v1/templates/{key}"): Role.admin,
    ("GET", "/v1/controllers/{mac}/connectors"): Role.viewer,
    ("GET", "/v1/controllers/{mac}/connectors/{connector}"): Role.viewer,
    ("PUT", "/v1/controllers/{mac}/connectors/{connector}"): Role.operator,
    ("DELETE", "/v1/controllers/{mac}/connectors/{connector}"): Role.admin,
    ("GET", "/v1/controllers/{mac}/connectors/{connector}/pins/{component}"): Role.viewer,
    ("PUT", "/v1/controllers/{mac}/connectors/{connector}/pins/{component}"): Role.operator,
    ("DELETE", "/v1/controllers/{mac}/connectors/{connector}/pins/{component}"): Role.admin,
    ("POST", "/v1/decode"): Role.viewer,
    ("POST", "/v1/import"): Role.operator,
    ("GET", "/v1/export"): Role.viewer,
    ("GET", "/v1/controllers/{mac}/certificates"): Role.viewer,
    ("POST", "/v1/controllers/{mac}/certificates/revoke"): Role.admin,
    ("POST", "/v1/controllers/{mac}/certificates/{serial}/revoke"): Role.admin,
    ("GET", "/v1/dead-letters"): Role.viewer,
    ("GET", "/v1/stream"): Role.viewer,
    ("POST", "/v1/controllers/{mac}/commands"): Role.operator,
    ("GET", "/v1/controllers/{mac}/commands"): Role.viewer,
    ("GET", "/v1/commands/{command_id}"): Role.viewer,
    ("GET", "/v1/me"): Role.viewer,
    ("GET", "/v1/controllers/{mac}/telemetry"): Role.viewer,
    ("GET", "/v1/activity"): Role.viewer,
}


def _served(api: Api) -> set[tuple[str, str]]:
    app = api.http.app
    assert isinstance(app, FastAPI)
    paths = app.openapi()["paths"]
    return {(m.upper(), p) for p, ops in paths.items() for m in ops if p not in PUBLIC_PATHS}


def _concrete(path: str) -> str:
    path = path.replace("{key}", "no-such-key").replace("{connector}", "J1")
    path = path.replace("{serial}", "abc1").replace("{command_id}", "1")
    return path.replace("{component}", "sensor-1").replace("{mac}", MAC).replace("{name}", "nobody")


def test_every_route_but_the_public_ones_refuses_without_a_token_and_below_its_role(
    api: Api,
) -> None:
    assert _served(api) == set(MIN_ROLE)
    for (method, path), role in MIN_ROLE.items():
        url = _concrete(path)
        r = api.http.request(method, url)
        problem(r, 401, "missing_token")
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = api.http.request(method, url, headers={"Authorization": "Bearer f2api_nope"})
        problem(r, 401, "wrong_token")
        for other in Role:
            r = api.http.request(method, url, headers=api.as_(other))
            if other.rank < role.rank:
                problem(r, 403, "forbidden")
            else:
                assert r.status_code not in (401, 403), (method, path, other, r.text)


def test_the_public_routes_need_no_token(api: Api) -> None:
    assert api.http.get("/healthz").json() == {"status": "ok", "database": "ok"}
    metrics = api.http.get("/metrics")
    assert metrics.status_code == 200
    assert "api_auth_refusals_total" in metrics.text
    schema = api.http.get("/openapi.json").json()
    mac = schema["paths"]["/v1/controllers/{mac}"]["get"]["parameters"][0]["schema"]
    assert "pattern" in mac


def test_expired_and_revoked_tokens_are_refused(api: Api) -> None:
    api.sql(
        "UPDATE registry.api_tokens SET expires_at = now() - interval '1 s' WHERE name = %s",
        "test-viewer",
    )
    r = api.http.get("/v1/controllers", headers=api.as_(Role.viewer))
    problem(r, 401, "expired_token")
    assert cli_main(["api-token", "revoke", "--name", "test-operator", "--conninfo",
                     api.conninfo]) == 0  # fmt: skip
    r = api.http.get("/v1/controllers", headers=api.as_(Role.operator))
    problem(r, 401, "revoked_token")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert api.http.get("/v1/controllers", headers=api.as_(Role.admin)).status_code == 200
    (used,) = api.sql("SELECT last_used_at FROM registry.api_tokens WHERE name = 'test-admin'")
    assert used[0] is not None


def test_tokens_are_stored_as_hashes_only(api: Api) -> None:
    rows = api.sql("SELECT name, token_sha256 FROM registry.api_tokens")
    assert {bytes(d) for _, d in rows} == {token_digest(t) for t in api.tokens.values()}


def test_register_a_controller_shows_its_claim_code_once_and_stores_its_hash(api: Api) -> None:
    created = api.register("AA:BB:CC:DD:EE:01", site="berlin-1", notes="door 3")
    assert created["mac"] == MAC
    assert created["site"] == "berlin-1"
    assert created["claim_code_pending"] is True
    ((stored,),) = api.sql("SELECT claim_code_hash FROM registry.devices WHERE mac = %s", MAC)
    assert stored.startswith("scrypt$")
    assert created["claim_code"] not in stored
    assert verify_claim_code(created["claim_code"], stored)
    got = api.http.get(f"/v1/controllers/{MAC}", headers=api.as_(Role.viewer))
    assert got.status_code == 200
    assert "claim_code" not in got.json()
    again = api.http.post("/v1/controllers", json={"mac": MAC, "name": "x"},
                          headers=api.as_(Role.operator))  # fmt: skip
    problem(again, 409, "mac_taken")


def test_list_filters_searches_and_pages(api: Api) -> None:
    for i in range(5):
        api.register(f"aabbccddee0{i}", site="berlin" if i % 2 else "paris")
    viewer = api.as_(Role.viewer)
    page = api.http.get("/v1/controllers?limit=2&offset=1", headers=viewer).json()
    assert page["total"] == 5
    assert [c["mac"] for c in page["items"]] == ["aabbccddee01", "aabbccddee02"]
    berlin = api.http.get("/v1/controllers?site=berlin", headers=viewer).json()
    assert berlin["total"] == 2
    found = api.http.get("/v1/controllers?q=ee:03", headers=viewer).json()
    assert [c["mac"] for c in found["items"]] == ["aabbccddee03"]
    by_name = api.http.get("/v1/controllers?q=CONTROLLER%20aabbccddee04", headers=viewer).json()
    assert by_name["total"] == 1


def test_list_shows_and_filters_connectivity(api: Api) -> None:
    for i in range(4):
        api.register(f"aabbccddee0{i}")
    # What the sink upserts (migration 0014): 00 online, 01 and 02 offline, 03 never heard of.
    api.sql("""INSERT INTO telemetry.controller_status (device_id, status, changed_at, last_seen)
               SELECT id, CASE WHEN mac = 'aabbccddee00' THEN 'online' ELSE 'offline' END,
                      now(), '2026-12-05 08:00:00+00'
               FROM registry.devices WHERE mac IN ('aabbccddee00', 'aabbccddee01',
                                                   'aabbccddee02')""")  # fmt: skip
    viewer = api.as_(Role.viewer)
    everyone = api.http.get("/v1/controllers", headers=viewer).json()["items"]
    assert [c["status"] for c in everyone] == ["online", "offline", "offline", "unknown"]
    assert everyone[0]["last_seen"].startswith("2026-12-05T08:00:00")
    assert everyone[3]["last_seen"] is None
    offline = api.http.get("/v1/controllers?status=offline&limit=1&offset=1", headers=viewer)
    assert offline.status_code == 200
    assert offline.json()["total"] == 2
    assert [c["mac"] for c in offline.json()["items"]] == ["aabbccddee02"]
    unknown = api.http.get("/v1/controllers?status=unknown", headers=viewer).json()
    assert [c["mac"] for c in unknown["items"]] == ["aabbccddee03"]
    online = api.http.get("/v1/controllers?status=online", headers=viewer).json()
    assert [c["mac"] for c in online["items"]] == ["aabbccddee00"]
    one = api.http.get("/v1/controllers/aabbccddee01", headers=viewer).json()
    assert (one["status"], one["last_seen"][:19]) == ("offline", "2026-12-05T08:00:00")
    assert api.http.get("/v1/controllers?status=asleep", headers=viewer).status_code == 422


def test_update_and_delete_write_one_audit_row_each(api: Api) -> None:
    api.register()
    r = api.http.patch(f"/v1/controllers/{MAC}", json={"site": "oslo", "notes": None},
                       headers=api.as_(Role.operator))  # fmt: skip
    assert r.status_code == 200
    assert r.json()["site"] == "oslo"
    problem(api.http.patch("/v1/controllers/aabbccddee99", json={"site": "x"},
                           headers=api.as_(Role.operator)), 404, "unknown_mac")  # fmt: skip
    api.sql("""INSERT INTO registry.certificates
               (serial, cn, kind, device_id, not_before, not_after, fingerprint_sha256)
               SELECT 'abc1', 'f2-' || mac, 'device', id, now(), now() + interval '1 day',
                      repeat('0', 64)
               FROM registry.devices WHERE mac = %s""", MAC)  # fmt: skip
    assert api.http.delete(f"/v1/controllers/{MAC}", headers=api.as_(Role.admin)).status_code == 204
    problem(api.http.get(f"/v1/controllers/{MAC}", headers=api.as_(Role.viewer)), 404,
            "unknown_mac")  # fmt: skip
    assert api.sql("SELECT device_id FROM registry.certificates WHERE serial = 'abc1'") == [(None,)]
    audit = api.http.get(f"/v1/audit?target=controller:{MAC}", headers=api.as_(Role.admin)).json()
    assert [e["action"] for e in audit["items"]] == [
        "controller.delete", "controller.update", "controller.create"]  # fmt: skip
    assert {e["actor"] for e in audit["items"]} == {"test-operator", "test-admin"}
    update = audit["items"][1]
    assert update["before"]["site"] is None
    assert update["after"]["site"] == "oslo"
    assert audit["items"][0]["after"] is None
    by_actor = api.http.get("/v1/audit?actor=test-admin", headers=api.as_(Role.admin)).json()
    assert by_actor["total"] == 1


def test_tokens_through_the_api(api: Api) -> None:
    admin = api.as_(Role.admin)
    r = api.http.post("/v1/tokens", json={"name": "ci", "role": "viewer", "expires_days": 1},
                      headers=admin)  # fmt: skip
    assert r.status_code == 201
    secret = r.json()["token"]
    assert secret.startswith("f2api_")
    assert r.json()["expires_at"] is not None
    headers = {"Authorization": f"Bearer {secret}"}
    assert api.http.get("/v1/controllers", headers=headers).status_code == 200
    problem(api.http.post("/v1/tokens", json={"name": "ci", "role": "admin"}, headers=admin),
            409, "name_taken")  # fmt: skip
    listed = api.http.get("/v1/tokens", headers=admin).json()
    assert "ci" in {t["name"] for t in listed}
    assert all("token" not in t for t in listed)
    assert api.http.delete("/v1/tokens/ci", headers=admin).json()["revoked_at"] is not None
    problem(api.http.get("/v1/controllers", headers=headers), 401, "revoked_token")
    problem(api.http.delete("/v1/tokens/nobody", headers=admin), 404, "unknown_token")
    actions = [e["action"] for e in api.http.get("/v1/audit?target=token:ci",
                                                 headers=admin).json()["items"]]  # fmt: skip
    assert actions == ["token.revoke", "token.create"]


def test_a_bad_mac_is_refused_without_being_echoed(api: Api) -> None:
    bad = "zz<script>evil"
    r = api.http.post("/v1/controllers", json={"mac": bad, "name": "x"},
                      headers=api.as_(Role.operator))  # fmt: skip
    problem(r, 422, "invalid_mac")
    assert "script" not in r.text
    assert "evil" not in r.text
    r = api.http.get("/v1/controllers/zz-not-a-mac-evil", headers=api.as_(Role.viewer))
    problem(r, 422, "invalid_mac")
    assert "evil" not in r.text


def test_values_the_database_cannot_hold_are_a_422_not_a_500(api: Api) -> None:
    """Found by the schema-driven run: text with a NUL and an offset beyond bigint."""
    operator, viewer = api.as_(Role.operator), api.as_(Role.viewer)
    body = {"mac": MAC, "name": "door\u0000secret"}
    r = api.http.post("/v1/controllers", content=json.dumps(body).encode(),
                      headers={**operator, "Content-Type": "application/json"})  # fmt: skip
    problem(r, 422, "invalid_request")
    assert "secret" not in r.text
    assert api.sql("SELECT count(*) FROM registry.devices") == [(0,)]
    problem(api.http.get("/v1/device-types?q=a%00b", headers=viewer), 422, "invalid_request")
    problem(api.http.get(f"/v1/audit?offset={2**70}", headers=api.as_(Role.admin)), 422,
            "invalid_request")  # fmt: skip
    assert api.http.get("/v1/controllers", headers=viewer).status_code == 200


def test_a_body_over_64_kib_is_refused(api: Api) -> None:
    body = {"mac": MAC, "name": "x", "notes": "n" * (65 * 1024)}
    r = api.http.post("/v1/controllers", json=body, headers=api.as_(Role.operator))
    problem(r, 413, "body_too_large")
    assert api.sql("SELECT count(*) FROM registry.devices") == [(0,)]


def test_the_cli_creates_lists_and_revokes(
    migrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--conninfo", migrated]
    assert cli_main(["api-token", "create", "--name", "ops", "--role", "operator",
                     "--expires", "30", *base]) == 0  # fmt: skip
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("f2api_")
    assert cli_main(["api-token", "create", "--name", "ops", "--role", "admin", *base]) == 1
    assert cli_main(["api-token", "create", "--name", "bad name!", "--role", "admin", *base]) == 2
    capsys.readouterr()
    assert cli_main(["api-token", "list", *base]) == 0
    listing = capsys.readouterr().out
    assert "ops\toperator\tactive" in listing
    assert secret not in listing
    assert cli_main(["api-token", "revoke", "--name", "ops", *base]) == 0
    assert cli_main(["api-token", "revoke", "--name", "nobody", *base]) == 1
    with psycopg.connect(migrated) as conn:
        rows = conn.execute("SELECT actor, action FROM registry.audit_log ORDER BY id").fetchall()
    assert rows == [("cli", "token.create"), ("cli", "token.revoke")]
