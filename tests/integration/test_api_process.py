"""`python -m f2pipe api` as an operator runs it: HTTPS with the certificate certgen issued
(ISSUED_DIR/api.crt), verified against the CA's certificate alone; TLS it refuses; a token's
request end to end through the process (certgen's admin API behind it); SIGTERM exits 0.
Without API_TLS_* it is plain HTTP and warns when told to listen beyond loopback."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from f2pipe.migrate import apply_migrations
from f2pipe_api.tokens import Role, create_token
from f2pipe_devtools.env import postgres_env, service_env
from f2pipe_devtools.servers import PostgresServer, free_port
from tests.integration.apikit import api_conninfo
from tests.integration.certgen_harness import (
    ADMIN_TOKEN,
    HOST,
    HttpsCertgen,
    certgen_env,
    handshake,
    start_https,
)

# Not `database`: nothing here depends on the storage engine, so the plain-PostgreSQL pass
# (make test) does not run it again.
pytestmark = pytest.mark.integration


@dataclass
class ApiProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_api(
    env: Mapping[str, str], log_path: Path, *, scheme: str, verify: ssl.SSLContext | bool,
    host: str = HOST,
) -> ApiProcess:  # fmt: skip
    port = free_port()
    argv = [sys.executable, "-m", "f2pipe", "api", "--host", host, "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    api = ApiProcess(process, f"{scheme}://{HOST}:{port}", log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the api exited with {process.returncode}:\n{api.log()}"
        try:
            if httpx.get(api.url + "/healthz", verify=verify, timeout=1).status_code == 200:
                return api
        except (httpx.TransportError, ssl.SSLError):
            pass
        time.sleep(0.1)
    api.stop()
    raise AssertionError(f"the api did not answer within 30 s:\n{api.log()}")


@dataclass
class Deployment:
    certgen: HttpsCertgen
    issued: Path
    env: dict[str, str]  # the api's, with TLS
    token: str  # operator


@pytest.fixture(scope="module")
def deployment(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    conninfo = postgres_server.create_database(f"api_process_{os.getpid()}")
    apply_migrations(conninfo)
    root = tmp_path_factory.mktemp("deployment")
    issued = root / "issued"
    certgen = start_https(
        certgen_env(conninfo, root / "ca", issued, CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN),
        root / "certgen.log",
    )
    env = service_env(
        postgres_env(api_conninfo(conninfo)),
        API_TLS_CERT_FILE=str(issued / "api.crt"),
        API_TLS_KEY_FILE=str(issued / "api.key"),
        API_CERTGEN_URL=certgen.url,
        API_CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN,
        API_CERTGEN_CA_FILE=str(certgen.ca_file),
        LOG_FORMAT="json",
    )
    token, _ = create_token(conninfo, "process-operator", Role.operator)
    try:
        yield Deployment(certgen, issued, env, token)
    finally:
        certgen.stop()


@pytest.fixture(scope="module")
def https_api(
    deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    log_path = tmp_path_factory.mktemp("api") / "api.log"
    api = start_api(deployment.env, log_path, scheme="https", verify=deployment.certgen.context())
    yield api
    api.stop()


def test_it_serves_https_with_certgen_s_certificate_for_its_names(
    deployment: Deployment, https_api: ApiProcess
) -> None:
    context = deployment.certgen.context()  # the CA certificate, nothing else
    presented = []
    for name in ("api", "localhost"):
        with (
            socket.create_connection((HOST, https_api.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        presented.append(x509.load_der_x509_certificate(der))
    on_disk = x509.load_pem_x509_certificate((deployment.issued / "api.crt").read_bytes())
    assert presented == [on_disk, on_disk]
    assert (deployment.issued / "api.key").stat().st_mode & 0o777 == 0o600


def test_a_token_s_request_works_end_to_end_over_https(
    deployment: Deployment, https_api: ApiProcess
) -> None:
    auth = {"Authorization": f"Bearer {deployment.token}"}
    with httpx.Client(base_url=https_api.url, verify=deployment.certgen.context()) as http:
        r = http.post("/v1/controllers", json={"mac": "a0b1c2d3e4f5", "name": "door"}, headers=auth)
        assert r.status_code == 201, r.text
        assert r.json()["claim_code"]
        # certgen's admin API, reached by the api over HTTPS with its own token.
        page = http.get("/v1/controllers/a0b1c2d3e4f5/certificates", headers=auth)
        assert page.status_code == 200, page.text
        assert page.json()["total"] == 0
        assert http.get("/v1/controllers").status_code == 401
        assert http.get("/metrics").status_code == 200
    # The access log names the path, never the query string.
    httpx.get(f"{https_api.url}/v1/controllers?q=secret-in-query", headers=auth,
              verify=deployment.certgen.context())  # fmt: skip
    time.sleep(0.2)
    assert "secret-in-query" not in https_api.log()


def test_plain_http_and_tls_1_1_get_no_answer(https_api: ApiProcess) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{HOST}:{https_api.port}/healthz", timeout=5)
    with pytest.raises(ssl.SSLError):
        handshake(https_api.port, ssl.TLSVersion.TLSv1_1)
    assert handshake(https_api.port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"


def test_sigterm_stops_it_with_status_0(deployment: Deployment, tmp_path: Path) -> None:
    api = start_api(deployment.env, tmp_path / "api.log", scheme="https",
                    verify=deployment.certgen.context())  # fmt: skip
    assert api.stop() == 0, api.log()


def test_sigterm_ends_open_streams_at_once(deployment: Deployment, tmp_path: Path) -> None:
    """An SSE response never ends by itself: the api ends each with `shutdown` on SIGTERM
    instead of waiting out uvicorn's 10 s graceful timeout."""
    context = deployment.certgen.context()
    api = start_api(deployment.env, tmp_path / "api.log", scheme="https", verify=context)
    auth = {"Authorization": f"Bearer {deployment.token}"}
    received: list[str] = []
    with (
        httpx.Client(base_url=api.url, verify=context, timeout=30) as http,
        http.stream("GET", "/v1/stream", headers=auth) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        received.append(next(lines))  # the stream is open
        stopped = time.monotonic()
        api.process.send_signal(signal.SIGTERM)
        received.extend(lines)  # until the server ends the response
        ended = time.monotonic() - stopped
    assert "event: shutdown" in received
    assert api.stop() == 0, api.log()
    assert ended < 5, f"the stream ended {ended:.1f} s after SIGTERM"


def test_without_tls_it_is_plain_http_and_warns_beyond_loopback(
    deployment: Deployment, tmp_path: Path
) -> None:
    plain = {k: v for k, v in deployment.env.items() if not k.startswith("API_TLS_")}
    api = start_api(plain, tmp_path / "api.log", scheme="http", verify=False, host="0.0.0.0")
    try:
        assert "tokens cross the network in clear" in api.log()
    finally:
        assert api.stop() == 0


def test_a_certificate_without_its_key_is_refused_at_start(
    deployment: Deployment, tmp_path: Path
) -> None:
    env = {k: v for k, v in deployment.env.items() if k != "API_TLS_KEY_FILE"}
    argv = [sys.executable, "-m", "f2pipe", "api", "--port", str(free_port())]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "API_TLS_CERT_FILE and API_TLS_KEY_FILE are set together" in result.stderr
