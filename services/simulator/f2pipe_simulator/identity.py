"""The simulator's state directory: each controller's key, certificate, and the CA.

```
STATE_DIR/                 mode 0700
  ca.crt                   the CA certgen returned at enrolment (the broker's trust anchor)
  devices/f2-<mac>.key     EC P-256 private key, mode 0600 from creation, never leaves here
  devices/f2-<mac>.crt     the client certificate certgen issued for it
```

Keys are created with mode 0600 under a temporary name (O_EXCL) and renamed into place, so
they are never readable by anyone else, not even for a moment. A key is kept across runs
and across failed enrolments; a certificate is reused while it is valid (right CN, matches the
key, issued by the CA in ca.crt, not within ``renew_before`` of expiry), so a restart does
not re-enrol: re-enrolling revokes the previous certificate, which makes the broker restart.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KEY_MODE = 0o600
DIR_MODE = 0o700


@dataclass(frozen=True, slots=True)
class DeviceFiles:
    cn: str
    key: Path
    cert: Path


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.devices = root / "devices"

    def create(self) -> StateDir:
        for directory in (self.root, self.devices):
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        return self

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.crt"

    def files(self, cn: str) -> DeviceFiles:
        return DeviceFiles(cn, self.devices / f"{cn}.key", self.devices / f"{cn}.crt")

    def key(self, cn: str) -> ec.EllipticCurvePrivateKey:
        """The controller's key: the one on disk, or a new one written with mode 0600."""
        path = self.files(cn).key
        with contextlib.suppress(FileNotFoundError):
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if isinstance(loaded, ec.EllipticCurvePrivateKey):
                return loaded
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(path, pem, KEY_MODE)
        return key

    def store(self, cn: str, certificate_pem: str, ca_pem: str) -> None:
        write_atomic(self.files(cn).cert, certificate_pem.encode(), 0o644)
        current = self.ca_file.read_bytes() if self.ca_file.exists() else b""
        if current != ca_pem.encode():
            write_atomic(self.ca_file, ca_pem.encode(), 0o644)

    def valid_certificate(
        self, cn: str, *, renew_before: timedelta, now: datetime | None = None
    ) -> bool:
        """Whether the stored certificate can be used as it is (see the module docstring)."""
        files = self.files(cn)
        try:
            cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
            ca = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
            key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        except (OSError, ValueError):
            return False
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or names[0].value != cn:
            return False
        if cert.public_key() != key.public_key():
            return False
        moment = now or datetime.now(UTC)
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc - renew_before:
            return False
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def client_context(self, cn: str, ca_file: Path | None = None) -> ssl.SSLContext:
        """TLS for controller ``cn``: its key and certificate; the broker's checked against
        ``ca_file``, by default the CA certgen returned (``ca.crt``)."""
        context = ssl.create_default_context(cafile=str(ca_file or self.ca_file))
        files = self.files(cn)
        context.load_cert_chain(files.cert, files.key)
        return context


def make_csr(cn: str, key: ec.EllipticCurvePrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file created with ``mode``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp creates 0600 files; widen only what is not secret.
        if mode != KEY_MODE:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
