"""certgen's API over HTTPS: one real service process (and database) for the whole module.

Each test works on its own controller or its own serials, so the order does not matter:
aabbccddee01 enrols and re-enrols, aabbccddee02 is revoked by MAC, aabbccddee03 is guessed at.
Every request comes from 127.0.0.1, so the throttle's budgets are raised for this module
(test_certgen_tls.py tests the throttle, from distinct addresses).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from f2pipe.migrate import apply_migrations
from f2pipe.seed import seed_demo
from f2pipe_devtools.servers import PostgresServer
from f2pipe_shared.claimcodes import generate_claim_code
from tests.integration.certgen_harness import ADMIN_TOKEN, certgen_env, ec_key, make_csr, metric
from tests.integration.test_certgen_tls import HttpsCertgen, start_https

pytestmark = pytest.mark.integration

MAC1, MAC2, MAC3 = "aabbccddee01", "aabbccddee02", "aabbccddee03"
UNKNOWN_MAC = "aabbccddee99"
PROBLEM = "application/problem+json"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Certgen:
    http: httpx.Client
    process: HttpsCertgen
    conninfo: str
    codes: dict[str, str]
    ca_dir: Path
    issued_dir: Path

    def enroll(self, mac: str, csr: str | None = None, code: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"mac": mac, "claim_code": code or self.codes[mac]}
        if csr is not None:
            body["csr_pem"] = csr
        return self.http.post("/v1/enroll", json=body)

    def ca_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.http.get("/v1/ca.pem").content)

    def crl(self) -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl(self.http.get("/v1/crl.pem").content)

    def revoke(self, what: str, reason: str | None) -> httpx.Response:
        """POST /v1/<what>/revoke as the admin; `what`: certificates/<serial> or devices/<mac>."""
        body = {} if reason is None else {"reason": reason}
        return self.http.post(f"/v1/{what}/revoke", json=body, headers=ADMIN)

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def certgen(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Certgen]:
    conninfo = postgres_server.create_database(f"certgen_api_{os.getpid()}")
    apply_migrations(conninfo)
    codes = dict(seed_demo(conninfo, controllers=3).claim_codes)
    root = tmp_path_factory.mktemp("certgen")
    env = certgen_env(
        conninfo,
        root / "ca",
        root / "issued",
        CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN,
        CERTGEN_SOURCE_FAILURES="1000",
        CERTGEN_MAC_FAILURES="1000",
    )
    process = start_https(env, root / "certgen.log")
    try:
        with process.client() as http:
            yield Certgen(http, process, conninfo, codes, root / "ca", root / "issued")
    finally:
        process.stop()


def assert_problem(response: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["reason"] == reason
    assert problem["status"] == status
    assert problem["type"].endswith(reason)
    assert problem["title"]
    assert problem["detail"]
    return problem


def crl_lists(crl: x509.CertificateRevocationList, serial: str) -> bool:
    return crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None


# --- enrolment ------------------------------------------------------------------------------


def test_enrol_with_csr_returns_a_client_certificate_for_f2_mac_recorded_as_valid(
    certgen: Certgen,
) -> None:
    key = ec_key()
    response = certgen.enroll(MAC1, make_csr(f"f2-{MAC1}", key))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["private_key_pem"] is None
    cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    ca = certgen.ca_certificate()
    cert.verify_directly_issued_by(ca)
    assert body["ca_certificate_pem"].encode() == ca.public_bytes(serialization.Encoding.PEM)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"f2-{MAC1}"
    assert body["cn"] == f"f2-{MAC1}"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.public_key() == key.public_key()
    assert body["serial"] == format(cert.serial_number, "x")
    rows = certgen.query(
        """SELECT c.cn, c.kind, c.status, d.mac, c.not_after, c.fingerprint_sha256
           FROM registry.certificates c JOIN registry.devices d ON d.id = c.device_id
           WHERE c.serial = %s""",
        body["serial"],
    )
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    assert rows == [(f"f2-{MAC1}", "device", "valid", MAC1, cert.not_valid_after_utc, fingerprint)]


def test_enrol_without_csr_returns_a_matching_key_that_is_kept_nowhere(certgen: Certgen) -> None:
    response = certgen.enroll(MAC1)
    assert response.status_code == 200, response.text
    body = response.json()
    key = serialization.load_pem_private_key(body["private_key_pem"].encode(), password=None)
    cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(certgen.ca_certificate())

    key_body = "".join(body["private_key_pem"].strip().splitlines()[1:-1])
    dumped = certgen.query("SELECT row_to_json(c)::text FROM registry.certificates c")
    assert all(key_body not in row[0] for row in dumped)
    for directory in (certgen.ca_dir, certgen.issued_dir):
        for path in directory.rglob("*"):
            if path.is_file():
                assert key_body not in "".join(path.read_text().split()), path
    assert key_body not in certgen.process.log()


def test_re_enrolment_supersedes_the_previous_certificate(certgen: Certgen) -> None:
    first = certgen.enroll(MAC1, make_csr(f"f2-{MAC1}")).json()["serial"]
    second = certgen.enroll(MAC1, make_csr(f"f2-{MAC1}")).json()["serial"]
    rows = dict(
        certgen.query(
            "SELECT serial, status || '/' || coalesce(revocation_reason, '-')"
            " FROM registry.certificates WHERE serial IN (%s, %s)",
            first,
            second,
        )
    )
    assert rows == {first: "revoked/superseded", second: "valid/-"}
    valid = certgen.query(
        "SELECT count(*) FROM registry.certificates WHERE cn = %s AND status = 'valid'",
        f"f2-{MAC1}",
    )
    assert valid == [(1,)]
    revoked = certgen.crl().get_revoked_certificate_by_serial_number(int(first, 16))
    assert revoked is not None
    reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.superseded


def test_wrong_claim_code_is_refused(certgen: Certgen) -> None:
    response = certgen.enroll(MAC1, make_csr(f"f2-{MAC1}"), code="2222-3333-4444-5555")
    assert_problem(response, 403, "enrolment_refused")


def test_unknown_mac_is_refused_as_a_wrong_code_is(certgen: Certgen) -> None:
    response = certgen.enroll(
        UNKNOWN_MAC, make_csr(f"f2-{UNKNOWN_MAC}"), code="2222-3333-4444-5555"
    )
    problem = assert_problem(response, 403, "enrolment_refused")
    assert UNKNOWN_MAC not in problem["detail"]


@pytest.mark.parametrize("mac", ["aabbccddee0", "aa:bb:cc:dd:ee:zz", "not a mac"])
def test_malformed_mac_is_refused(certgen: Certgen, mac: str) -> None:
    response = certgen.enroll(mac, code="2222-3333-4444-5555")
    problem = assert_problem(response, 422, "invalid_mac")
    assert problem["errors"][0]["loc"] == ["body", "mac"]
    assert "input" not in problem["errors"][0]


def test_mac_with_separators_is_accepted(certgen: Certgen) -> None:
    response = certgen.enroll("AA:BB:CC:DD:EE:01", code=certgen.codes[MAC1])
    assert response.status_code == 200, response.text
    assert response.json()["cn"] == f"f2-{MAC1}"


def test_csr_with_another_cn_is_refused(certgen: Certgen) -> None:
    response = certgen.enroll(MAC1, make_csr(f"f2-{MAC2}"))
    problem = assert_problem(response, 422, "wrong_cn")
    assert f"f2-{MAC1}" in problem["detail"]


def test_csr_with_a_weak_key_is_refused(certgen: Certgen) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    response = certgen.enroll(MAC1, make_csr(f"f2-{MAC1}", weak))
    problem = assert_problem(response, 422, "weak_key")
    assert "1024" in problem["detail"]


def test_garbage_csr_is_refused(certgen: Certgen) -> None:
    response = certgen.enroll(MAC1, "-----BEGIN CERTIFICATE REQUEST-----\nnope\n")
    assert_problem(response, 422, "bad_csr")


def test_invalid_json_body_is_a_problem(certgen: Certgen) -> None:
    response = certgen.http.post(
        "/v1/enroll", content=b'{"mac": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "invalid_json")


def test_a_body_over_64_kib_is_refused_unread_whether_sized_or_chunked(certgen: Certgen) -> None:
    json_type = {"content-type": "application/json"}
    big = b'{"mac": "' + b"a" * (64 * 1024) + b'"}'
    assert_problem(certgen.http.post("/v1/enroll", content=big, headers=json_type), 413,
                   "body_too_large")  # fmt: skip

    def chunks() -> Iterator[bytes]:
        yield from (b"a" * 65_536 for _ in range(1600))  # 100 MiB if it were all read

    chunked = certgen.http.post("/v1/enroll", content=chunks(), headers=json_type)
    assert "content-length" not in chunked.request.headers
    assert_problem(chunked, 413, "body_too_large")
    assert certgen.http.get("/healthz").status_code == 200


def test_a_body_that_is_not_utf8_is_invalid_json(certgen: Certgen) -> None:
    response = certgen.http.post(
        "/v1/enroll", content=b'{"mac": "\xff"}', headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "invalid_json")


def test_a_refused_mac_is_not_echoed(certgen: Certgen) -> None:
    response = certgen.http.post(
        "/v1/enroll", json={"mac": "aabbccddee01\n'; DROP TABLE devices; --", "claim_code": "x" * 8}
    )
    assert_problem(response, 422, "invalid_mac")
    assert "DROP TABLE" not in response.text
    assert "\\n" not in response.text


def test_missing_field_is_a_problem_naming_it(certgen: Certgen) -> None:
    response = certgen.http.post("/v1/enroll", json={"mac": MAC1})
    problem = assert_problem(response, 422, "invalid_request")
    assert [e["loc"] for e in problem["errors"]] == [["body", "claim_code"]]


def test_wrong_codes_for_a_mac_never_lock_out_the_right_code(certgen: Certgen) -> None:
    for _ in range(25):  # well-formed codes: each one costs its scrypt check
        response = certgen.enroll(MAC3, code=generate_claim_code())
        assert_problem(response, 403, "enrolment_refused")
    enrolled = certgen.enroll(MAC3, make_csr(f"f2-{MAC3}"))
    assert enrolled.status_code == 200, enrolled.text
    # Nothing about it is kept in the registry (the throttle is in memory).
    assert certgen.query("SELECT count(*) FROM registry.enrolment_lockouts") == [(0,)]
    assert certgen.query("SELECT count(*) FROM registry.claim_failures") == [(0,)]


# --- public endpoints -----------------------------------------------------------------------


def test_healthz_reports_database_and_ca(certgen: Certgen) -> None:
    response = certgen.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "ca": "ok"}


def test_ca_and_crl_are_pem_and_the_crl_is_signed_by_the_ca(certgen: Certgen) -> None:
    ca = certgen.ca_certificate()
    crl = certgen.crl()
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.subject
    assert certgen.http.get("/v1/ca.pem").headers["content-type"] == "application/x-pem-file"


def test_bootstrap_certificates_are_recorded(certgen: Certgen) -> None:
    rows = certgen.query(
        "SELECT kind, cn FROM registry.certificates WHERE kind <> 'device' ORDER BY kind, cn"
    )
    assert ("broker", "mqtt_broker") in rows
    assert ("broker", "certgen") in rows  # certgen's own HTTPS certificate
    assert ("service", "svc-bridge") in rows
    assert ("service", "svc-operator") in rows


def test_metrics_count_enrolments_and_failures_by_reason(certgen: Certgen) -> None:
    certgen.enroll(MAC1, make_csr(f"f2-{MAC1}"))  # a certificate for the next one to supersede
    before = certgen.http.get("/metrics").text
    certgen.enroll(MAC1, make_csr(f"f2-{MAC1}"))
    certgen.enroll(MAC1, code="2222-3333-4444-5555")
    certgen.enroll(UNKNOWN_MAC, code="2222-3333-4444-5555")
    certgen.http.post("/v1/enroll", json={"mac": "nope", "claim_code": "2222-3333"})
    after = certgen.http.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("certgen_enrolments_total", flow="csr") == 1
    assert delta("certgen_enrolment_failures_total", reason="wrong_claim_code") == 1
    assert delta("certgen_enrolment_failures_total", reason="unknown_mac") == 1
    assert delta("certgen_enrolment_failures_total", reason="invalid_mac") == 1
    assert delta("certgen_revocations_total", reason="superseded") == 1


def test_unknown_route_and_wrong_method_are_problems(certgen: Certgen) -> None:
    assert_problem(certgen.http.get("/v1/nothing"), 404, "not_found")
    wrong = certgen.http.get("/v1/enroll")
    assert_problem(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"


def test_the_docs_ui_is_off_and_the_access_log_leaves_query_strings_out(
    certgen: Certgen,
) -> None:
    assert_problem(certgen.http.get("/docs"), 404, "not_found")
    assert_problem(certgen.http.get("/redoc"), 404, "not_found")
    assert (
        certgen.http.get("/v1/ca.pem", params={"claim_code": "QUERY-SECRET-1"}).status_code == 200
    )
    access = [line for line in certgen.process.log().splitlines() if "uvicorn.access" in line]
    assert any("GET /v1/ca.pem HTTP/1.1" in line for line in access), access[-5:]
    assert "QUERY-SECRET-1" not in certgen.process.log()


def test_openapi_describes_every_endpoint_with_its_problems(certgen: Certgen) -> None:
    schema = certgen.http.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/v1/enroll",
        "/v1/certificates",
        "/v1/certificates/{serial}/revoke",
        "/v1/devices/{mac}/revoke",
        "/v1/service-certificates",
        "/v1/ca.pem",
        "/v1/crl.pem",
        "/healthz",
        "/metrics",
    }
    enroll = schema["paths"]["/v1/enroll"]["post"]
    assert {"200", "403", "422", "429", "503"} <= set(enroll["responses"])
    assert "404" not in enroll["responses"]  # an unknown MAC is a 403 like a wrong code
    assert "enrolment_refused" in enroll["responses"]["403"]["description"]
    assert enroll["responses"]["429"]["content"][PROBLEM]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert "locked_out" in enroll["responses"]["429"]["description"]
    assert "body_too_large" in enroll["responses"]["413"]["description"]
    components = schema["components"]["schemas"]
    assert {"Problem", "EnrollRequest", "EnrollResponse", "CertificatePage"} <= set(components)
    assert "HTTPValidationError" not in components  # every 422 is documented as a problem
    assert components["EnrollRequest"]["properties"]["mac"]["pattern"].startswith("^(?:")
    revoke = schema["paths"]["/v1/devices/{mac}/revoke"]["post"]
    assert {"401", "403", "404", "422"} <= set(revoke["responses"])
    assert revoke["security"] == [{"adminToken": []}]


# --- admin ----------------------------------------------------------------------------------


def test_admin_without_token_is_401_with_www_authenticate(certgen: Certgen) -> None:
    response = certgen.http.get("/v1/certificates")
    assert_problem(response, 401, "missing_token")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_admin_with_wrong_token_is_403(certgen: Certgen) -> None:
    response = certgen.http.post(
        f"/v1/devices/{MAC2}/revoke",
        json={"reason": "key_compromise"},
        headers={"Authorization": "Bearer not-the-token"},
    )
    assert_problem(response, 403, "wrong_token")


def test_list_certificates_filters_and_pages(certgen: Certgen) -> None:
    serial = certgen.enroll(MAC1, make_csr(f"f2-{MAC1}")).json()["serial"]
    response = certgen.http.get(
        "/v1/certificates", params={"mac": "aa-bb-cc-dd-ee-01", "status": "valid"}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    page = response.json()
    assert [c["serial"] for c in page["items"]] == [serial]
    assert page["items"][0]["mac"] == MAC1
    assert page["total"] == 1

    everything = certgen.http.get("/v1/certificates", params={"limit": 2}, headers=ADMIN).json()
    assert len(everything["items"]) == 2
    assert everything["total"] >= 4  # the broker, two services, at least one device
    second = certgen.http.get(
        "/v1/certificates", params={"limit": 2, "offset": 2}, headers=ADMIN
    ).json()
    assert not {c["serial"] for c in second["items"]} & {c["serial"] for c in everything["items"]}

    bad = certgen.http.get("/v1/certificates", params={"mac": "zz"}, headers=ADMIN)
    assert_problem(bad, 422, "invalid_mac")
    bad = certgen.http.get("/v1/certificates", params={"status": "maybe"}, headers=ADMIN)
    assert_problem(bad, 422, "invalid_request")


def test_revoke_by_serial_lists_it_on_the_crl(certgen: Certgen) -> None:
    created = certgen.http.post(
        "/v1/service-certificates", json={"name": "to-revoke"}, headers=ADMIN
    ).json()
    serial = created["serial"]
    response = certgen.revoke(f"certificates/{serial.upper()}", "key_compromise")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "revoked"
    assert response.json()["revocation_reason"] == "key_compromise"
    assert crl_lists(certgen.crl(), serial)
    assert certgen.query(
        "SELECT status, revocation_reason FROM registry.certificates WHERE serial = %s", serial
    ) == [("revoked", "keyCompromise")]

    again = certgen.revoke(f"certificates/{serial}", "key_compromise")
    assert_problem(again, 409, "already_revoked")
    assert_problem(certgen.revoke("certificates/abc123", "unspecified"), 404, "unknown_serial")
    missing_reason = certgen.revoke(f"certificates/{serial}", None)
    assert_problem(missing_reason, 422, "invalid_request")


def test_revoke_by_mac_revokes_its_valid_certificates_and_lists_them_on_the_crl(
    certgen: Certgen,
) -> None:
    serial = certgen.enroll(MAC2, make_csr(f"f2-{MAC2}")).json()["serial"]
    response = certgen.revoke(f"devices/{MAC2.upper()}", "cessation_of_operation")
    assert response.status_code == 200, response.text
    assert [c["serial"] for c in response.json()["revoked"]] == [serial]
    assert crl_lists(certgen.crl(), serial)
    assert certgen.query(
        "SELECT count(*) FROM registry.certificates WHERE cn = %s AND status = 'valid'",
        f"f2-{MAC2}",
    ) == [(0,)]

    nothing_left = certgen.revoke(f"devices/{MAC2}", "cessation_of_operation")
    assert nothing_left.json()["revoked"] == []
    unknown = certgen.revoke(f"devices/{UNKNOWN_MAC}", "unspecified")
    assert_problem(unknown, 404, "unknown_mac")
    assert_problem(certgen.revoke("devices/xyz", "unspecified"), 422, "invalid_mac")


def test_service_certificate_is_issued_with_its_key_once(certgen: Certgen) -> None:
    response = certgen.http.post(
        "/v1/service-certificates", json={"name": "dashboard"}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    body = response.json()
    cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    key = serialization.load_pem_private_key(body["private_key_pem"].encode(), password=None)
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(certgen.ca_certificate())
    assert body["cn"] == "svc-dashboard"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certgen.query(
        "SELECT kind, cn, device_id FROM registry.certificates WHERE serial = %s", body["serial"]
    ) == [("service", "svc-dashboard", None)]
    bad = certgen.http.post("/v1/service-certificates", json={"name": "Bad Name"}, headers=ADMIN)
    assert_problem(bad, 422, "invalid_request")


# --- secrets --------------------------------------------------------------------------------


def test_ca_key_and_issued_keys_are_0600(certgen: Certgen) -> None:
    keys = [certgen.ca_dir / "ca.key", *certgen.issued_dir.glob("*.key")]
    assert len(keys) >= 5  # the CA, the broker, certgen, the bridge, the operator
    assert {path.name: path.stat().st_mode & 0o777 for path in keys} == {
        path.name: 0o600 for path in keys
    }


def test_log_names_refusals_and_holds_no_private_key_or_claim_code(certgen: Certgen) -> None:
    certgen.enroll(MAC1)  # a generated key went out in this response
    certgen.enroll(MAC1, code="2222-3333-4444-5555")
    certgen.enroll(MAC1, make_csr(f"f2-{MAC2}"))
    certgen.enroll(UNKNOWN_MAC, code="2222-3333-4444-5555")
    log = certgen.process.log()
    assert "PRIVATE KEY" not in log
    for code in certgen.codes.values():
        assert code not in log
        assert code.replace("-", "") not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    refusals = [line for line in lines if line["msg"] == "request refused"]
    for mac, reason in [
        (MAC1, "wrong_claim_code"),
        (MAC1, "wrong_cn"),
        (UNKNOWN_MAC, "unknown_mac"),
    ]:
        expected = {"path": "/v1/enroll", "mac": mac, "cn": f"f2-{mac}", "reason": reason}
        assert any(expected.items() <= line.items() for line in refusals), reason
