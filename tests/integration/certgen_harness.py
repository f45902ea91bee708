"""Run `python -m f2pipe certgen` as an operator would, for tests: env, process, CSRs, metrics.

`start_https` runs it with TLS (the default) and waits until its /healthz answers over a
connection verified against the CA's certificate alone, as a device's would be.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from f2pipe_devtools.env import postgres_env, service_env
from f2pipe_devtools.servers import free_port

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
HOST = "127.0.0.1"


def certgen_env(conninfo: str, ca_dir: Path, issued_dir: Path, **extra: str) -> dict[str, str]:
    return service_env(
        postgres_env(conninfo),
        {"CA_DIR": str(ca_dir), "ISSUED_DIR": str(issued_dir), "LOG_FORMAT": "json",
         "LOG_LEVEL": "DEBUG"},
        extra,  # a test's own settings win
    )  # fmt: skip


def run_certgen(
    env: Mapping[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run certgen to completion (start-up refusals, --bootstrap-only)."""
    return subprocess.run(
        [sys.executable, "-m", "f2pipe", "certgen", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class CertgenProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"certgen exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"certgen not healthy after {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 15) -> int:
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


@dataclass
class HttpsCertgen:
    process: CertgenProcess  # its url is https://127.0.0.1:<port>
    ca_file: Path

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def context(self) -> ssl.SSLContext:
        """What a device holds: the CA certificate provisioned with it, and nothing else."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.context(), timeout=30)

    def stop(self) -> int:
        return self.process.stop()

    def log(self) -> str:
        return self.process.log()


def start_https(env: Mapping[str, str], log_path: Path, timeout: float = 30) -> HttpsCertgen:
    """certgen on 127.0.0.1 and a free port, serving HTTPS; returned once /healthz answers 200
    over a connection verified against CA_DIR/ca.crt."""
    port = free_port()
    argv = [sys.executable, "-m", "f2pipe", "certgen", "--host", HOST, "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    started = HttpsCertgen(
        CertgenProcess(process, f"https://{HOST}:{port}", log_path),
        Path(env["CA_DIR"]) / "ca.crt",
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"certgen exited with {process.returncode}:\n{started.log()}")
        if started.ca_file.exists():
            try:
                with started.client() as http:
                    if http.get("/healthz", timeout=1).status_code == 200:
                        return started
            except (httpx.TransportError, ssl.SSLError):
                pass
        time.sleep(0.1)
    started.stop()
    raise RuntimeError(f"certgen not healthy over HTTPS after {timeout} s:\n{started.log()}")


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(cn: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> str:
    key = key or ec_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def handshake(port: int, version: ssl.TLSVersion, ciphers: str | None = None) -> str | None:
    """Our side offers exactly `version` (and `ciphers`); the version agreed, or raises."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers((ciphers or "DEFAULT") + ":@SECLEVEL=0")  # let our side offer it at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1, on purpose
        context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        return tls.version()
