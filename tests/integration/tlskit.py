"""Certificates and a Mosquitto with our production configuration, for TLS tests.

A CA from f2pipe_certgen.ca in a temporary directory (`Pki`), and the real broker template
rendered by f2pipe.brokerconfig and run under run-broker.sh (`start_broker`), as
docker-compose runs it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from f2pipe.brokerconfig import ACL, TEMPLATE, render, supervisor_command
from f2pipe_certgen.ca import CertificateAuthority, RevokedEntry
from f2pipe_devtools.servers import MissingBinaryError, MosquittoServer
from f2pipe_shared.settings import CaSettings
from tests.conftest import missing

POLL_SECONDS = 1  # run-broker.sh's CRL check interval in tests


# --- certificates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    cn: str
    cert: Path
    key: Path


@dataclass
class Pki:
    """A CA in a directory, with the broker's and the services' certificates."""

    root: Path
    ca: CertificateAuthority
    settings: CaSettings
    serials: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path) -> Pki:
        settings = CaSettings(ca_dir=str(root / "ca"), issued_dir=str(root / "issued"))
        ca, _ = CertificateAuthority.bootstrap(settings)
        return cls(root, ca, settings)

    @property
    def ca_file(self) -> Path:
        return Path(self.settings.ca_dir) / "ca.crt"

    def service(self, name: str) -> Identity:
        issued = Path(self.settings.issued_dir)
        return Identity(f"svc-{name}", issued / f"{name}.crt", issued / f"{name}.key")

    def device(self, cn: str, *, days: int = 30) -> Identity:
        issued, key = self.ca.issue_key_and_certificate(cn, days=days)
        self.serials[cn] = issued.serial
        return self._store(cn, issued.pem, key)

    def expired_device(self, cn: str) -> Identity:
        """Valid in every way but time: made directly with the CA's key, as certgen never would."""
        ca_key = serialization.load_pem_private_key(
            (Path(self.settings.ca_dir) / "ca.key").read_bytes(), None
        )
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca.certificate_pem.encode())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=30))
            .not_valid_after(now - timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return self._store(f"{cn}-expired", pem, key_pem.decode())

    def revoke(self, *cns: str) -> None:
        now = datetime.now(UTC)
        self.ca.write_crl([RevokedEntry(self.serials[cn], now, "key_compromise") for cn in cns])

    def _store(self, name: str, cert_pem: str, key_pem: str) -> Identity:
        directory = self.root / "devices"
        directory.mkdir(exist_ok=True)
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_text(cert_pem)
        key.touch(mode=0o600)
        key.write_text(key_pem)
        return Identity(name.removesuffix("-expired"), cert, key)


# --- brokers ----------------------------------------------------------------------------------


class SupervisedMosquitto(MosquittoServer):
    """Mosquitto under run-broker.sh, configured from the template by brokerconfig.render."""

    def __init__(self, directory: Path, pki: Pki, *, supervised: bool = True) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ACL, directory / "acl")
        config = render(
            TEMPLATE.read_text(),
            ca_dir=pki.settings.ca_dir,
            issued_dir=pki.settings.issued_dir,
            config_dir=directory,
            data_dir=None,  # the harness sets persistence_location itself
            port="{port}",
            host="{host}",
        )
        super().__init__(directory, config=config)
        self.supervised = supervised

    def command(self) -> list[str]:
        return supervisor_command(self.config_path) if self.supervised else super().command()

    def popen_kwargs(self) -> dict[str, object]:
        return {"env": {**os.environ, "CRL_POLL_SECONDS": str(POLL_SECONDS)}}


def start_broker(directory: Path, pki: Pki, *, supervised: bool = True) -> SupervisedMosquitto:
    try:
        broker = SupervisedMosquitto(directory, pki, supervised=supervised)
    except MissingBinaryError as exc:
        missing(exc)
    return broker.start()
