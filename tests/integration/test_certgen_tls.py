"""certgen over HTTPS, as a device meets it: one real certgen process (and database) for the
module, verified against the CA's certificate alone; what TLS it refuses; and the enrolment
throttle end to end, through a trusted proxy's X-Forwarded-For.

`start_https` (certgen_harness.py, re-exported here for the modules importing it from here)
runs `python -m f2pipe certgen` as an operator would, and waits until its /healthz answers
over a verified connection.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from f2pipe.migrate import apply_migrations
from f2pipe.seed import seed_demo
from f2pipe_devtools.servers import PostgresServer
from tests.integration.certgen_harness import (
    ADMIN_TOKEN,
    HOST,
    HttpsCertgen,
    certgen_env,
    handshake,
    make_csr,
    start_https,
)

pytestmark = pytest.mark.integration

__all__ = ["HttpsCertgen", "start_https"]  # re-exported: other modules import them from here

UNKNOWN_MAC = "aabbccddee99"
WRONG = "2222-3333-4444-5555"
# Distinct client addresses, as the trusted proxy (the test, on 127.0.0.1) reports them.
ATTACKER, DEVICE, OTHER = "203.0.113.66", "198.51.100.7", "192.0.2.50"


@dataclass
class Certgen:
    server: HttpsCertgen
    http: httpx.Client
    conninfo: str
    codes: dict[str, str]
    issued_dir: Path

    def enroll(self, mac: str, code: str, source: str) -> httpx.Response:
        return self.http.post(
            "/v1/enroll",
            json={"mac": mac, "claim_code": code, "csr_pem": make_csr(f"f2-{mac}")},
            headers={"X-Forwarded-For": source},
        )


@pytest.fixture(scope="module")
def certgen(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Certgen]:
    conninfo = postgres_server.create_database(f"certgen_tls_{os.getpid()}")
    apply_migrations(conninfo)
    codes = dict(seed_demo(conninfo, controllers=2).claim_codes)
    root = tmp_path_factory.mktemp("certgen-tls")
    env = certgen_env(
        conninfo,
        root / "ca",
        root / "issued",
        CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN,
        # The test is the proxy: each request says which client it passes on.
        CERTGEN_TRUSTED_PROXIES=HOST,
        CERTGEN_SOURCE_FAILURES="3",
    )
    server = start_https(env, root / "certgen.log")
    try:
        with server.client() as http:
            yield Certgen(server, http, conninfo, codes, root / "issued")
    finally:
        server.stop()


def macs(certgen: Certgen) -> list[str]:
    return sorted(certgen.codes)


# --- HTTPS ----------------------------------------------------------------------------------


def test_a_device_trusting_only_the_ca_enrols_over_https(certgen: Certgen) -> None:
    mac = macs(certgen)[0]
    response = certgen.enroll(mac, certgen.codes[mac], DEVICE)
    assert response.status_code == 200, response.text
    assert response.json()["cn"] == f"f2-{mac}"
    # The same trust anchor the device uses for the broker is the one it got back.
    assert response.json()["ca_certificate_pem"] == certgen.server.ca_file.read_text()


def test_certgen_presents_its_own_server_certificate_for_its_names(certgen: Certgen) -> None:
    for name in ("localhost", "127.0.0.1"):
        with (
            socket.create_connection((HOST, certgen.server.port), timeout=5) as raw,
            certgen.server.context().wrap_socket(raw, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        assert der is not None
        cert = x509.load_der_x509_certificate(der)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "certgen"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"certgen", "localhost"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "::1"} <= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    on_disk = x509.load_pem_x509_certificate((certgen.issued_dir / "certgen.crt").read_bytes())
    assert on_disk == cert
    assert (certgen.issued_dir / "certgen.key").stat().st_mode & 0o777 == 0o600
    with psycopg.connect(certgen.conninfo) as conn:
        rows = conn.execute(
            "SELECT kind, serial FROM registry.certificates WHERE cn = 'certgen'"
        ).fetchall()
    assert rows == [("broker", format(cert.serial_number, "x"))]


def test_plain_http_to_the_tls_port_gets_no_answer(certgen: Certgen) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{HOST}:{certgen.server.port}/healthz", timeout=5)
    assert certgen.http.get("/healthz").status_code == 200  # and it still serves


def test_a_client_that_does_not_trust_our_ca_is_refused(certgen: Certgen) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(certgen.server.url + "/healthz", timeout=5)  # the system's CAs only


def test_tls_1_1_is_refused(certgen: Certgen) -> None:
    with pytest.raises(ssl.SSLError) as caught:
        handshake(certgen.server.port, ssl.TLSVersion.TLSv1_1)
    # The server said no (asyncio's TLS may hang up before its alert is out): our side did
    # offer TLS 1.1, else this would be NO_PROTOCOLS_AVAILABLE before anything was sent.
    assert caught.value.reason in {"TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING"}
    assert handshake(certgen.server.port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert handshake(certgen.server.port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"


def test_tls_1_2_only_with_forward_secret_aead_suites(certgen: Certgen) -> None:
    port, tls12 = certgen.server.port, ssl.TLSVersion.TLSv1_2
    assert handshake(port, tls12, "ECDHE-ECDSA-AES128-GCM-SHA256") == "TLSv1.2"
    assert handshake(port, tls12, "ECDHE-ECDSA-CHACHA20-POLY1305") == "TLSv1.2"
    for weak in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA256"):  # CBC
        with pytest.raises(ssl.SSLError):
            handshake(port, tls12, weak)


# --- the throttle, end to end ---------------------------------------------------------------


def test_an_attacker_elsewhere_cannot_keep_the_device_from_enrolling(certgen: Certgen) -> None:
    mac = macs(certgen)[1]
    statuses = [certgen.enroll(mac, WRONG, ATTACKER).status_code for _ in range(6)]
    assert statuses == [403, 403, 403, 429, 429, 429]
    throttled = certgen.enroll(mac, certgen.codes[mac], ATTACKER)  # even the right code
    assert throttled.status_code == 429
    assert throttled.json()["reason"] == "locked_out"
    assert 0 < int(throttled.headers["retry-after"]) <= 60

    device = certgen.enroll(mac, certgen.codes[mac], DEVICE)
    assert device.status_code == 200, device.text


def test_an_unknown_mac_is_answered_exactly_as_a_wrong_code(certgen: Certgen) -> None:
    unknown = certgen.enroll(UNKNOWN_MAC, WRONG, OTHER)
    wrong = certgen.enroll(macs(certgen)[0], WRONG, OTHER)

    def shown(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = [(k, v) for k, v in response.headers.multi_items() if k != "date"]
        return response.status_code, headers, response.content

    assert shown(unknown) == shown(wrong)
    assert unknown.status_code == 403
    assert unknown.json()["reason"] == "enrolment_refused"
    assert UNKNOWN_MAC not in unknown.text
