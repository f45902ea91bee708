"""/v1/controllers/{mac}/certificates against a real certgen over HTTPS, both on one
PostgreSQL database: a controller registered through the api enrols at certgen, the api lists
its certificate and revokes it through certgen's admin API, and certgen's list and CRL show it
revoked. One certgen, one database and one api for the module; each test has its own MACs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from fastapi.testclient import TestClient
from pydantic import SecretStr

from f2pipe.migrate import apply_migrations
from f2pipe_api.app import create_app
from f2pipe_api.certgen_client import CertgenClient
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.ports import CertgenPort
from f2pipe_api.settings import ApiSettings
from f2pipe_api.store import PostgresStore
from f2pipe_api.tokens import Role, create_token
from f2pipe_devtools.servers import PostgresServer, free_port
from f2pipe_shared.settings import SettingsError, load
from tests.integration.apikit import Api, problem
from tests.integration.certgen_harness import ADMIN_TOKEN, HttpsCertgen, certgen_env, make_csr
from tests.integration.certgen_harness import start_https as start_certgen

# Not `database`: nothing here depends on the storage engine, so the plain-PostgreSQL pass
# (make test) does not run it again.
pytestmark = pytest.mark.integration

CERTGEN_ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Fleet:
    api: Api
    certgen: HttpsCertgen
    http: httpx.Client  # to certgen, as a device or its operator

    def enrol(self, mac: str) -> str:
        """Register the controller through the api, enrol it at certgen: its serial."""
        code = self.api.register(mac)["claim_code"]
        body = {"mac": mac, "claim_code": code, "csr_pem": make_csr(f"f2-{mac}")}
        r = self.http.post("/v1/enroll", json=body)
        assert r.status_code == 200, r.text
        serial: str = r.json()["serial"]
        return serial

    def at_certgen(self, mac: str) -> dict[str, str]:
        """serial → status, as certgen's own admin API lists them."""
        r = self.http.get(f"/v1/certificates?mac={mac}", headers=CERTGEN_ADMIN)
        return {c["serial"]: c["status"] for c in r.json()["items"]}

    def crl_lists(self, serial: str) -> bool:
        crl = x509.load_pem_x509_crl(self.http.get("/v1/crl.pem").content)
        return crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None

    def audit(self, mac: str) -> list[dict[str, Any]]:
        r = self.api.http.get(
            f"/v1/audit?target=controller:{mac}", headers=self.api.as_(Role.admin)
        )
        items: list[dict[str, Any]] = r.json()["items"]
        return [e for e in items if e["action"] == "certificate.revoke"]


@contextmanager
def api_on(conninfo: str, tokens: dict[Role, str], certgen: CertgenPort | None) -> Iterator[Api]:
    app = create_app(db=PostgresStore(conninfo), metrics=ApiMetrics(), certgen=certgen)
    with TestClient(app) as http:
        yield Api(http, conninfo, tokens)


@pytest.fixture(scope="module")
def database(postgres_server: PostgresServer) -> tuple[str, dict[Role, str]]:
    conninfo = postgres_server.create_database(f"api_certificates_{os.getpid()}")
    apply_migrations(conninfo)
    tokens = {role: create_token(conninfo, f"test-{role.value}", role)[0] for role in Role}
    return conninfo, tokens


@pytest.fixture(scope="module")
def certgen(
    database: tuple[str, dict[Role, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpsCertgen]:
    root = tmp_path_factory.mktemp("certgen")
    env = certgen_env(database[0], root / "ca", root / "issued", CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    server = start_certgen(env, root / "certgen.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fleet(database: tuple[str, dict[Role, str]], certgen: HttpsCertgen) -> Iterator[Fleet]:
    client = CertgenClient(
        certgen.url, SecretStr(ADMIN_TOKEN), ca_file=str(certgen.ca_file), timeout=10
    )
    with api_on(*database, client) as api, certgen.client() as http:
        yield Fleet(api, certgen, http)


def test_list_a_controllers_certificate_revoke_it_and_see_it_at_certgen(fleet: Fleet) -> None:
    mac = "aabbccdd0001"
    serial = fleet.enrol(mac)
    url = f"/v1/controllers/{mac}/certificates"
    page = fleet.api.http.get(url, headers=fleet.api.as_(Role.viewer)).json()
    assert page["total"] == 1
    (listed,) = page["items"]
    assert (listed["serial"], listed["cn"], listed["mac"]) == (serial, f"f2-{mac}", mac)
    assert (listed["status"], listed["kind"]) == ("valid", "device")

    r = fleet.api.http.post(f"{url}/{serial.upper()}/revoke", json={"reason": "key_compromise"},
                            headers=fleet.api.as_(Role.admin))  # fmt: skip
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["revocation_reason"]) == ("revoked", "key_compromise")
    assert fleet.at_certgen(mac) == {serial: "revoked"}
    assert fleet.crl_lists(serial)
    (row,) = fleet.audit(mac)
    assert row["actor"] == "test-admin"
    assert (row["before"]["status"], row["after"]["status"]) == ("valid", "revoked")
    assert row["after"]["serial"] == serial
    revoked = fleet.api.http.get(f"{url}?status=revoked", headers=fleet.api.as_(Role.viewer))
    assert [c["serial"] for c in revoked.json()["items"]] == [serial]

    again = fleet.api.http.post(f"{url}/{serial}/revoke", json={"reason": "superseded"},
                                headers=fleet.api.as_(Role.admin))  # fmt: skip
    problem(again, 409, "already_revoked")
    assert len(fleet.audit(mac)) == 1


def test_revoke_every_valid_certificate_of_a_controller(fleet: Fleet) -> None:
    mac = "aabbccdd0002"
    serial = fleet.enrol(mac)
    url = f"/v1/controllers/{mac}/certificates/revoke"
    admin = fleet.api.as_(Role.admin)
    r = fleet.api.http.post(url, json={"reason": "cessation_of_operation"}, headers=admin)
    assert r.status_code == 200, r.text
    assert [c["serial"] for c in r.json()["revoked"]] == [serial]
    assert fleet.at_certgen(mac) == {serial: "revoked"}
    assert fleet.crl_lists(serial)
    assert [e["after"]["revocation_reason"] for e in fleet.audit(mac)] == ["cessation_of_operation"]
    # Nothing valid left: nothing revoked, nothing audited.
    r = fleet.api.http.post(url, json={"reason": "cessation_of_operation"}, headers=admin)
    assert (r.status_code, r.json()["revoked"]) == (200, [])
    assert len(fleet.audit(mac)) == 1


def test_unknown_serials_and_controllers_are_refused(fleet: Fleet) -> None:
    mine, other = "aabbccdd0003", "aabbccdd0004"
    fleet.enrol(mine)
    others = fleet.enrol(other)
    admin, body = fleet.api.as_(Role.admin), {"reason": "key_compromise"}
    base = f"/v1/controllers/{mine}/certificates"
    # Another controller's certificate is not revoked through this one.
    problem(fleet.api.http.post(f"{base}/{others}/revoke", json=body, headers=admin), 404,
            "unknown_serial")  # fmt: skip
    assert fleet.at_certgen(other) == {others: "valid"}
    problem(fleet.api.http.post(f"{base}/abcdef0123/revoke", json=body, headers=admin), 404,
            "unknown_serial")  # fmt: skip
    nobody = "/v1/controllers/aabbccdd0999/certificates"
    problem(fleet.api.http.post(f"{nobody}/revoke", json=body, headers=admin), 404, "unknown_mac")
    empty = fleet.api.http.get(nobody, headers=fleet.api.as_(Role.viewer)).json()
    assert (empty["total"], empty["items"]) == (0, [])
    assert fleet.audit(mine) == []


def test_bad_requests_are_refused_before_certgen_is_asked(fleet: Fleet) -> None:
    mac = "aabbccdd0005"
    serial = fleet.enrol(mac)
    admin = fleet.api.as_(Role.admin)
    base = f"/v1/controllers/{mac}/certificates"
    for body in ({}, {"reason": "certificate_hold"}, {"reason": "unspecified", "more": 1}):
        problem(fleet.api.http.post(f"{base}/{serial}/revoke", json=body, headers=admin), 422,
                "invalid_request")  # fmt: skip
    problem(fleet.api.http.post(f"{base}/xyz/revoke", json={"reason": "unspecified"},
                                headers=admin), 422, "invalid_request")  # fmt: skip
    r = fleet.api.http.get("/v1/controllers/zz-evil/certificates", headers=admin)
    problem(r, 422, "invalid_mac")
    assert "evil" not in r.text
    operator = fleet.api.as_(Role.operator)
    r = fleet.api.http.post(f"{base}/revoke", json={"reason": "unspecified"}, headers=operator)
    problem(r, 403, "forbidden")
    assert fleet.at_certgen(mac) == {serial: "valid"}


def _unavailable(api: Api, mac: str, secret: str | None = None) -> None:
    """Every certificate route answers 503 certgen_unavailable, revealing no secret."""
    admin, body = api.as_(Role.admin), {"reason": "key_compromise"}
    base = f"/v1/controllers/{mac}/certificates"
    answers = [
        api.http.get(base, headers=api.as_(Role.viewer)),
        api.http.post(f"{base}/revoke", json=body, headers=admin),
        api.http.post(f"{base}/abc/revoke", json=body, headers=admin),
    ]
    for r in answers:
        problem(r, 503, "certgen_unavailable")
        if secret is not None:
            assert secret not in r.text
        assert "Traceback" not in r.text


def test_certgen_unreachable_misconfigured_or_untrusted_is_503(
    fleet: Fleet, database: tuple[str, dict[Role, str]], tmp_path: Path
) -> None:
    mac = "aabbccdd0006"
    serial = fleet.enrol(mac)
    ca = str(fleet.certgen.ca_file)
    nowhere = CertgenClient(f"https://127.0.0.1:{free_port()}", SecretStr(ADMIN_TOKEN),
                            ca_file=ca, timeout=2)  # fmt: skip
    wrong_token = "wrong-token-0123456789"
    wrong = CertgenClient(fleet.certgen.url, SecretStr(wrong_token), ca_file=ca, timeout=5)
    # Trusting the system's CAs only, the api must not talk to certgen (nor send it the token).
    untrusted = CertgenClient(fleet.certgen.url, SecretStr(ADMIN_TOKEN), timeout=5)
    for client, secret in ((nowhere, ADMIN_TOKEN), (wrong, wrong_token), (untrusted, ADMIN_TOKEN),
                           (None, None)):  # fmt: skip
        with api_on(*database, client) as api:
            _unavailable(api, mac, secret)
    assert fleet.at_certgen(mac) == {serial: "valid"}
    assert fleet.audit(mac) == []


def test_certgen_settings_refuse_a_token_in_clear_or_a_url_without_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_CERTGEN_ADMIN_TOKEN", ADMIN_TOKEN)
    for bad in ("http://certgen:8080", "ftp://certgen", "https://u:p@certgen:8080"):
        monkeypatch.setenv("API_CERTGEN_URL", bad)
        with pytest.raises(SettingsError, match="API_CERTGEN_URL") as refused:
            load(ApiSettings)
        assert ADMIN_TOKEN not in str(refused.value)
    monkeypatch.setenv("API_CERTGEN_URL", "http://127.0.0.1:8080/")
    assert load(ApiSettings).api_certgen_url == "http://127.0.0.1:8080"
    monkeypatch.setenv("API_CERTGEN_ADMIN_TOKEN", "")  # compose's ${VAR:-}
    with pytest.raises(SettingsError, match="API_CERTGEN_ADMIN_TOKEN"):
        load(ApiSettings)
    monkeypatch.setenv("API_CERTGEN_URL", "")
    assert load(ApiSettings).api_certgen_url is None
