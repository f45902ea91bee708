"""certgen start-up as an operator meets it: refusals with one clear line, bootstrap, SIGTERM;
HTTPS by default, plain HTTP on loopback only when asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography import x509

from f2pipe.migrate import apply_migrations
from f2pipe_devtools.servers import free_port
from tests.integration.certgen_harness import (
    ADMIN_TOKEN,
    CertgenProcess,
    certgen_env,
    run_certgen,
)
from tests.integration.test_certgen_tls import start_https

pytestmark = pytest.mark.integration


@pytest.fixture
def migrated(pg_conninfo: str) -> str:
    apply_migrations(pg_conninfo)
    return pg_conninfo


def certificate_rows(conninfo: str) -> list[tuple[str, str]]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT kind, cn FROM registry.certificates ORDER BY kind, cn")
        return rows.fetchall()


def test_production_without_admin_token_refuses_to_start(migrated: str, tmp_path: Path) -> None:
    result = run_certgen(certgen_env(migrated, tmp_path / "ca", tmp_path / "issued"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "f2pipe certgen: CERTGEN_ADMIN_TOKEN is not set; it is required unless "
        "F2PIPE_ENV=development"
    ]
    assert not (tmp_path / "ca" / "ca.key").exists()


def test_development_without_token_starts_with_the_admin_api_off(
    migrated: str, tmp_path: Path
) -> None:
    env = certgen_env(migrated, tmp_path / "ca", tmp_path / "issued", F2PIPE_ENV="development")
    service = start_https(env, tmp_path / "certgen.log")
    try:
        with service.client() as http:
            assert http.get("/healthz").status_code == 200
            admin = http.get("/v1/certificates", headers={"Authorization": "Bearer anything"})
        assert admin.status_code == 403
        assert admin.json()["reason"] == "admin_disabled"
    finally:
        service.stop()


def test_sigterm_stops_it_gracefully_with_status_0(migrated: str, tmp_path: Path) -> None:
    env = certgen_env(
        migrated, tmp_path / "ca", tmp_path / "issued", CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN
    )
    service = start_https(env, tmp_path / "certgen.log")
    assert service.stop() == 0
    assert '"msg": "certgen stopped"' in service.log()


def test_damaged_ca_stops_start_up_with_a_clear_message(migrated: str, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    (ca_dir / "ca.key").write_text(
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"
    )
    (ca_dir / "ca.crt").write_text("not a certificate\n")
    env = certgen_env(migrated, ca_dir, tmp_path / "issued", CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    result = run_certgen(env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"f2pipe certgen: the CA in {ca_dir} cannot be used: ")
    assert "ca.key is damaged" in last
    assert (ca_dir / "ca.crt").read_text() == "not a certificate\n"  # never overwritten


def test_unmigrated_database_stops_start_up(pg_conninfo: str, tmp_path: Path) -> None:
    env = certgen_env(
        pg_conninfo, tmp_path / "ca", tmp_path / "issued", CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN
    )
    result = run_certgen(env)
    assert result.returncode == 1
    assert "run `f2pipe migrate` first" in result.stderr
    assert not (tmp_path / "ca" / "ca.key").exists()  # nothing made that could not be recorded


def test_bootstrap_only_creates_and_records_the_ca_once(migrated: str, tmp_path: Path) -> None:
    # No admin token needed: --bootstrap-only serves nothing.
    env = certgen_env(migrated, tmp_path / "ca", tmp_path / "issued")
    first = run_certgen(env, "--bootstrap-only")
    assert first.returncode == 0, first.stderr
    expected = [
        ("broker", "api"),  # the control-plane api's HTTPS certificate
        ("broker", "certgen"),  # certgen's own HTTPS certificate
        ("broker", "mqtt_broker"),
        ("service", "svc-api-commands"),  # the api's MQTT client for commands
        ("service", "svc-bridge"),
        ("service", "svc-operator"),
    ]
    assert certificate_rows(migrated) == expected
    ca_key = (tmp_path / "ca" / "ca.key").read_bytes()
    certgen_crt = (tmp_path / "issued" / "certgen.crt").read_bytes()
    api = x509.load_pem_x509_certificate((tmp_path / "issued" / "api.crt").read_bytes())
    names = api.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "api" in names.get_values_for_type(x509.DNSName)
    for key in (tmp_path / "ca" / "ca.key", *(tmp_path / "issued").glob("*.key")):
        assert key.stat().st_mode & 0o777 == 0o600

    second = run_certgen(env, "--bootstrap-only")
    assert second.returncode == 0, second.stderr
    assert certificate_rows(migrated) == expected
    assert (tmp_path / "ca" / "ca.key").read_bytes() == ca_key
    assert (tmp_path / "issued" / "certgen.crt").read_bytes() == certgen_crt  # issued once


def test_healthz_is_503_when_the_database_is_gone(migrated: str, tmp_path: Path) -> None:
    env = certgen_env(
        migrated, tmp_path / "ca", tmp_path / "issued", CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN
    )
    service = start_https(env, tmp_path / "certgen.log")
    try:
        dbname = psycopg.conninfo.conninfo_to_dict(migrated)["dbname"]
        admin = migrated.replace(f"dbname={dbname}", "dbname=postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
        with service.client() as http:
            response = http.get("/healthz", timeout=10)
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["reason"] == "unavailable"
    finally:
        service.stop()


def test_throttle_and_key_settings_take_effect(migrated: str, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    from f2pipe.seed import seed_demo

    seeded = seed_demo(migrated, 1)
    env = certgen_env(
        migrated,
        tmp_path / "ca",
        tmp_path / "issued",
        CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN,
        CERTGEN_SOURCE_FAILURES="2",
        CA_KEY_ALGORITHM="rsa",
        BROKER_SANS="mqtt.example.org,10.1.2.3",
        CERTGEN_TLS_SANS="certgen.example.org",
    )
    service = start_https(env, tmp_path / "certgen.log")
    try:
        mac = next(iter(seeded.claim_codes))
        body = {"mac": mac, "claim_code": "WRONG-CODE-0000"}
        with service.client() as http:
            statuses = [http.post("/v1/enroll", json=body).status_code for _ in range(3)]
    finally:
        service.stop()
    assert statuses == [403, 403, 429]  # throttled after 2 failures, not the default 10
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    assert isinstance(ca.public_key(), rsa.RSAPublicKey)
    broker = x509.load_pem_x509_certificate((tmp_path / "issued" / "broker.crt").read_bytes())
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mqtt.example.org" in sans.get_values_for_type(x509.DNSName)
    assert "10.1.2.3" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    own = x509.load_pem_x509_certificate((tmp_path / "issued" / "certgen.crt").read_bytes())
    assert isinstance(own.public_key(), rsa.RSAPublicKey)  # served with ECDHE-RSA suites
    names = own.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"certgen", "certgen.example.org", "localhost"} <= set(
        names.get_values_for_type(x509.DNSName)
    )


def test_without_tls_it_serves_plain_http_on_loopback_only(migrated: str, tmp_path: Path) -> None:
    port = free_port()
    env = certgen_env(
        migrated,
        tmp_path / "ca",
        tmp_path / "issued",
        CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN,
        CERTGEN_TLS="false",
        CERTGEN_API_PORT=str(port),
    )
    log_path = tmp_path / "certgen.log"
    with log_path.open("wb") as log:  # no --host: the default
        process = subprocess.Popen([sys.executable, "-m", "f2pipe", "certgen"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    service = CertgenProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        service.wait_healthy(30)
        assert httpx.get(service.url + "/healthz").status_code == 200
    finally:
        service.stop()
    serving = [json.loads(line) for line in service.log().splitlines() if '"serving"' in line]
    assert [(s["host"], s["scheme"]) for s in serving] == [("127.0.0.1", "http")]
    assert not (tmp_path / "issued" / "certgen.crt").exists()  # nothing to serve it with
