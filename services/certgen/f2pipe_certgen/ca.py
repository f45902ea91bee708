"""The certificate authority: one CA that every identity of the pipeline chains to.

Files (docs/security.md): `ca_dir/ca.key` (0600) and `ca.crt`, the CRL `ca_dir/crl.pem`;
the broker's and the services' certificates and keys in `issued_dir`. Device private keys are
never written anywhere: a device sends a CSR, or receives a generated key once.

The CA never overwrites itself. Anything odd about its files (missing half, unreadable,
damaged, a key that does not match the certificate) raises `CaError` naming the file, so
certgen stops with a message an operator can act on instead of minting a second CA.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from f2pipe_certgen import files, keys
from f2pipe_certgen.ports import SYSTEM_CLOCK, Clock, RevocationReason
from f2pipe_shared.settings import CaSettings
from f2pipe_shared.topics import mac_from_cn

log = logging.getLogger(__name__)

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
CRL = "crl.pem"
BROKER = "broker"
CERTGEN = "certgen"  # certgen's own HTTPS server certificate: ISSUED_DIR/certgen.crt and .key
API = "api"  # the control-plane api's server certificate: ISSUED_DIR/api.crt and .key
# Every server certificate answers to these too: clients on the same host (health checks).
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
# api-commands: the api's MQTT client for commands (issued/api.crt is its HTTPS certificate).
SERVICE_IDENTITIES = ("bridge", "operator", "api-commands")
SERVICE_PREFIX = "svc-"
# A service name becomes a file name and a CN "svc-<name>"; the prefix keeps every service CN
# apart from device CNs (f2-<12 hex>), so no enrolment can ever mint a service identity.
_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
# Devices and servers whose clocks run a little behind still accept a fresh certificate.
CLOCK_SKEW = timedelta(minutes=5)
# CSR signature hashes refused by name (cryptography cannot verify them either).
_HASH_NAMES = {"sha1": "SHA-1", "md5": "MD5"}
# RFC 5280 reason names, spelled as cryptography's ReasonFlags members: what an operator may
# give (ports.RevocationReason), and certificate_hold, which only the CRL format knows.
REVOCATION_REASONS: tuple[str, ...] = (*get_args(RevocationReason), "certificate_hold")
Kind = Literal["device", "service", "broker"]


class CaError(RuntimeError):
    """The CA's files are missing, unreadable, damaged or do not belong together."""


class CsrError(ValueError):
    """A device's CSR cannot be signed; `reason` is bad_csr, wrong_cn or weak_key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class IssuedCertificate:
    serial: str  # lowercase hex, no separators
    cn: str
    kind: str  # "device" | "service" | "broker"
    not_before: datetime  # UTC-aware
    not_after: datetime
    pem: str
    fingerprint_sha256: str  # lowercase hex

    @classmethod
    def of(cls, cert: x509.Certificate, kind: str) -> IssuedCertificate:
        return cls(
            serial=format(cert.serial_number, "x"),
            cn=_common_name(cert.subject) or "",
            kind=kind,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        )


@dataclass(frozen=True)
class RevokedEntry:
    serial: str
    revoked_at: datetime
    reason: str  # one of REVOCATION_REASONS


def service_cn(name: str) -> str:
    if not _SERVICE_NAME.match(name):
        raise ValueError(
            f"service identity {name!r}: use 1-31 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return SERVICE_PREFIX + name


class CertificateAuthority:
    def __init__(
        self,
        ca_dir: Path,
        key: keys.PrivateKey,
        certificate: x509.Certificate,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.ca_dir = ca_dir
        self._key = key
        self._cert = certificate
        self._clock = clock  # validity periods and CRL updates start at its now()
        self._crl_lock = threading.Lock()

    # --- creating and loading ---------------------------------------------------------------

    @classmethod
    def bootstrap(
        cls,
        settings: CaSettings,
        *,
        key_algorithm: Literal["ec", "rsa"] = "ec",
        broker_sans: Sequence[str] = (),
        service_identities: Sequence[str] = SERVICE_IDENTITIES,
        certgen_names: Sequence[str] = (),
        api_names: Sequence[str] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> tuple[CertificateAuthority, list[IssuedCertificate]]:
        """Create whatever is missing (CA, broker, services, CRL); return what was issued now.

        `certgen_names`: certgen's own server certificate, CN the first name, DNS/IP names
        all of them and LOCAL_NAMES; empty: none (certgen serves plain HTTP). It is recorded
        with kind `broker`, the registry's kind for the pipeline's TLS servers. `api_names`:
        the same for the control-plane api (issued/api.crt), which holds no CA key to make its
        own.

        Service certificates, and certgen's, live as long as the broker's (BROKER_EXPIRY):
        they are the pipeline's own infrastructure and are renewed together.
        """
        service_cns = [service_cn(name) for name in service_identities]
        sans = _server_names(settings.broker_cn, broker_sans)
        ca_dir, issued_dir = Path(settings.ca_dir), Path(settings.issued_dir)
        ca_dir.mkdir(parents=True, exist_ok=True)
        issued_dir.mkdir(parents=True, exist_ok=True)

        if os.path.lexists(ca_dir / CA_KEY) or os.path.lexists(ca_dir / CA_CERT):
            ca = cls.load(ca_dir, clock=clock)
        else:
            ca = cls._create(ca_dir, settings, key_algorithm, clock)

        issued: list[IssuedCertificate] = []
        pairs: list[tuple[str, str, Kind, list[x509.GeneralName]]] = [
            (BROKER, settings.broker_cn, "broker", sans)
        ]
        if certgen_names:
            cn = certgen_names[0]
            pairs.append((CERTGEN, cn, "broker", _server_names(cn, certgen_names[1:])))
        if api_names:
            cn = api_names[0]
            pairs.append((API, cn, "broker", _server_names(cn, api_names[1:])))
        for name, cn in zip(service_identities, service_cns, strict=True):
            pairs.append((name, cn, "service", []))
        for name, cn, kind, names in pairs:
            if ca._has_pair(issued_dir, name):
                _warn_missing_names(issued_dir / f"{name}.crt", names)
                continue
            key = keys.generate(key_algorithm)
            cert = ca._issue(key.public_key(), cn, settings.broker_expiry, kind, names)
            # Key before certificate: a certificate on disk always has its key beside it.
            files.replace(issued_dir / f"{name}.key", keys.private_pem(key), files.PRIVATE)
            files.replace(issued_dir / f"{name}.crt", _pem(cert), files.PUBLIC)
            issued.append(IssuedCertificate.of(cert, kind))
            log.info("issued %s certificate", kind, extra={"cn": cn, "file": f"{name}.crt"})

        if not os.path.lexists(ca_dir / CRL):
            ca.write_crl([])
        return ca, issued

    @classmethod
    def _create(
        cls, ca_dir: Path, settings: CaSettings, algorithm: Literal["ec", "rsa"], clock: Clock
    ) -> CertificateAuthority:
        key = keys.generate(algorithm)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, settings.ca_cn)])
        now = _whole_seconds(clock.now())
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + timedelta(days=settings.ca_expiry))
            # path_length 0: this CA signs end-entity certificates only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        try:
            files.create(ca_dir / CA_KEY, keys.private_pem(key), files.PRIVATE)
            files.create(ca_dir / CA_CERT, _pem(cert), files.PUBLIC)
        except FileExistsError as exc:
            # Another process bootstrapped between our check and our write: theirs stands.
            raise CaError(f"{exc.filename} appeared while creating the CA; start again") from None
        log.info("created CA", extra={"cn": settings.ca_cn, "algorithm": keys.describe(public)})
        return cls(ca_dir, key, cert, clock=clock)

    @classmethod
    def load(cls, ca_dir: Path, *, clock: Clock = SYSTEM_CLOCK) -> CertificateAuthority:
        key_path, cert_path = ca_dir / CA_KEY, ca_dir / CA_CERT
        key_pem, cert_pem = _read_ca_file(key_path, cert_path), _read_ca_file(cert_path, key_path)
        try:
            key = keys.load_private(key_pem)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # No exception text: it could quote bytes of the key.
            raise CaError(
                f"{key_path} is damaged: not an unencrypted PEM EC or RSA private key"
            ) from None
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CaError(f"{cert_path} is damaged: not a PEM certificate ({exc})") from None
        if not keys.same_public_key(key.public_key(), cert.public_key()):
            raise CaError(f"{key_path} does not match {cert_path}: they belong to different CAs")
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise CaError(f"{cert_path} is not a CA certificate (basicConstraints CA:FALSE)")
        if cert.not_valid_after_utc <= _whole_seconds(clock.now()):
            raise CaError(
                f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: rotate the CA "
                "(docs/security.md)"
            )
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("CA key is readable by others: chmod 600 it", extra={"file": str(key_path)})
        return cls(ca_dir, key, cert, clock=clock)

    def _has_pair(self, directory: Path, name: str) -> bool:
        """True when `name`.crt and .key exist and were issued by this CA."""
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        if not (cert_path.exists() and key_path.exists()):
            return False
        remedy = f"remove {cert_path.name} and {key_path.name} to have a new pair issued"
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            cert.verify_directly_issued_by(self._cert)
        except OSError as exc:
            raise CaError(f"cannot read {cert_path}: {exc.strerror}") from None
        except (ValueError, TypeError, InvalidSignature):
            raise CaError(
                f"{cert_path} is damaged or was not issued by {self.ca_dir / CA_CERT}: {remedy}"
            ) from None
        try:
            key = keys.load_private(key_path.read_bytes())
        except OSError as exc:
            raise CaError(f"cannot read {key_path}: {exc.strerror}") from None
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise CaError(f"{key_path} is damaged: {remedy}") from None
        if not keys.same_public_key(key.public_key(), cert.public_key()):
            raise CaError(f"{key_path} does not match {cert_path}: {remedy}")
        return True

    # --- issuing ----------------------------------------------------------------------------

    @property
    def certificate_pem(self) -> str:
        return _pem(self._cert).decode("ascii")

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    def sign_csr(
        self, csr_pem: str, *, cn: str, days: int, kind: str = "device"
    ) -> IssuedCertificate:
        """Certify the key of a CSR for `cn`; only the CSR's key and CN are used."""
        _check_client_cn(cn, kind)
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode("utf-8"))
        except (ValueError, UnicodeError):
            raise CsrError(
                "bad_csr",
                "the CSR is not a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)",
            ) from None
        try:
            public = csr.public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise CsrError(
                "weak_key", "the CSR's key type is not supported; use EC P-256, EC P-384 or RSA"
            ) from None
        problem = keys.unacceptable(public)
        if problem is not None:
            raise CsrError("weak_key", problem)
        weak = csr.signature_hash_algorithm
        if isinstance(weak, hashes.SHA1 | hashes.MD5):
            # Verifying would fail anyway (cryptography refuses these hashes): say why.
            raise CsrError(
                "bad_csr",
                f"the CSR is signed with {_HASH_NAMES[weak.name]}, which certgen does not accept; "
                "sign it with SHA-256 or stronger",
            )
        try:
            signed = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm):
            signed = False
        if not signed:
            raise CsrError(
                "bad_csr",
                "the CSR's signature does not verify: it was altered or not signed with its key",
            )
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        asked = [str(attr.value) for attr in names]
        if asked != [cn]:
            shown = ", ".join(repr(name) for name in asked) or "no common name"
            raise CsrError(
                "wrong_cn", f"the CSR's subject has {shown}; it must have CN={cn} exactly"
            )
        cert = self._issue(public, cn, days, _client_kind(kind))
        return IssuedCertificate.of(cert, kind)

    def issue_key_and_certificate(
        self, cn: str, *, days: int, kind: str = "device"
    ) -> tuple[IssuedCertificate, str]:
        """A new EC P-256 key and its certificate; the key PEM is returned, never stored."""
        _check_client_cn(cn, kind)
        key = keys.generate("ec")
        cert = self._issue(key.public_key(), cn, days, _client_kind(kind))
        return IssuedCertificate.of(cert, kind), keys.private_pem(key).decode("ascii")

    def _issue(
        self,
        public: CertificatePublicKeyTypes,
        cn: str,
        days: int,
        kind: Kind,
        names: Sequence[x509.GeneralName] = (),
    ) -> x509.Certificate:
        if days < 1:
            raise ValueError(f"certificate lifetime must be at least 1 day, not {days}")
        now = self._now()
        # A certificate outliving its CA could never be verified past the CA's end anyway.
        not_after = min(now + timedelta(days=days), self._cert.not_valid_after_utc)
        is_rsa = isinstance(public, rsa.RSAPublicKey)
        usage = (
            ExtendedKeyUsageOID.SERVER_AUTH
            if kind == "broker"
            else (ExtendedKeyUsageOID.CLIENT_AUTH)
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    # TLS 1.2's RSA key exchange encrypts to the key; EC keys only sign.
                    key_encipherment=is_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def _now(self) -> datetime:
        return _whole_seconds(self._clock.now())

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)

    # --- revocation -------------------------------------------------------------------------

    def write_crl(self, revoked: Iterable[RevokedEntry], *, next_update_days: int = 7) -> str:
        """Sign a CRL listing every entry and put it in place atomically; return its PEM.

        When the current CRL already lists exactly these entries and is less than half-way
        to its next update, it is kept and returned as it is: run-broker.sh restarts the
        broker whenever the file changes, so a routine refresh must not rewrite it.

        The CRL must be signed again before its next update: OpenSSL (and so Mosquitto)
        refuses every client certificate once the CRL it checks against has expired.
        """
        if next_update_days < 1:
            raise ValueError(f"next_update_days must be at least 1, not {next_update_days}")
        entries: dict[int, x509.RevokedCertificate] = {}
        for entry in revoked:
            serial = _serial_number(entry.serial)
            entries.setdefault(serial, _revoked_certificate(serial, entry))
        path = self.ca_dir / CRL
        with self._crl_lock:
            now = self._now()
            current = self._current_crl(path)
            if current is not None and _same_entries(current, entries.values()):
                assert current.next_update_utc is not None  # _current_crl checked it
                if current.next_update_utc - now >= timedelta(days=next_update_days) / 2:
                    return current.public_bytes(serialization.Encoding.PEM).decode("ascii")
            # RFC 5280: CRL numbers only grow. Seconds since 1970 keep growing even if the
            # previous CRL is lost; +1 covers two CRLs signed within one second.
            number = max(_crl_number(current) + 1, int(now.timestamp()))
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(self._cert.subject)
                # OpenSSL refuses every client while a CRL's last update lies in its future:
                # a broker whose clock is a little behind must not lock everybody out.
                .last_update(now - CLOCK_SKEW)
                .next_update(now + timedelta(days=next_update_days))
                .add_extension(self._authority_key_identifier(), critical=False)
                .add_extension(x509.CRLNumber(number), critical=False)
            )
            for revoked_certificate in entries.values():
                builder = builder.add_revoked_certificate(revoked_certificate)
            pem = builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
            files.replace(path, pem, files.PUBLIC)
        log.info("wrote CRL", extra={"revoked": len(entries), "crl_number": number})
        return pem.decode("ascii")

    def _current_crl(self, path: Path) -> x509.CertificateRevocationList | None:
        """The CRL in place if it is ours, intact and has a next update; else None."""
        try:
            crl = x509.load_pem_x509_crl(path.read_bytes())
        except (OSError, ValueError):
            return None
        public = self._cert.public_key()
        if crl.issuer != self._cert.subject or crl.next_update_utc is None:
            return None
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            return None
        return crl if crl.is_signature_valid(public) else None

    def crl_pem(self) -> str:
        path = self.ca_dir / CRL
        try:
            return path.read_text(encoding="ascii")
        except OSError as exc:
            raise CaError(f"cannot read {path}: {exc.strerror}") from None

    @property
    def crl_next_update(self) -> datetime:
        """When the current CRL expires: sign a new one (write_crl) well before then."""
        crl = x509.load_pem_x509_crl(self.crl_pem().encode("ascii"))
        next_update = crl.next_update_utc
        if next_update is None:
            raise CaError(f"{self.ca_dir / CRL} has no next update")
        return next_update


def _whole_seconds(now: datetime) -> datetime:
    # X.509 times have whole seconds; dropping the rest keeps IssuedCertificate equal to the
    # certificate it describes.
    return now.astimezone(UTC).replace(microsecond=0)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def _read_ca_file(path: Path, partner: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CaError(
            f"{path} is missing but {partner} exists: certgen never replaces a CA. Restore "
            f"{path.name} from a backup, or move {partner.name} away to start a new CA (every "
            "certificate issued so far then stops working)"
        ) from None
    except OSError as exc:
        raise CaError(f"cannot read {path}: {exc.strerror}") from None


def _check_client_cn(cn: str, kind: str) -> None:
    # A programming error, not a device's: the caller derives `cn` from what it verified.
    if kind == "device":
        mac_from_cn(cn)
    elif kind == "service":
        if not cn.startswith(SERVICE_PREFIX):
            raise ValueError(f"a service CN starts with {SERVICE_PREFIX!r}: {cn!r}")
        service_cn(cn.removeprefix(SERVICE_PREFIX))
    else:
        raise ValueError(f"kind must be 'device' or 'service', not {kind!r}")


def _client_kind(kind: str) -> Kind:
    return "service" if kind == "service" else "device"


def _server_names(cn: str, extra: Sequence[str]) -> list[x509.GeneralName]:
    return list(dict.fromkeys(_san(name) for name in (cn, *LOCAL_NAMES, *extra)))


def _warn_missing_names(path: Path, names: Sequence[x509.GeneralName]) -> None:
    """An existing server certificate is kept, even when the names asked for changed since it
    was issued: say so, since clients using a new name would fail to verify it."""
    if not names:
        return
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        has = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        has = set()
    missing = [str(name.value) for name in names if name not in has]
    if missing:
        log.warning(
            "server certificate lacks names now configured: remove it and its key to have a "
            "new pair issued",
            extra={"file": str(path), "missing": missing},
        )


def _san(name: str) -> x509.GeneralName:
    if not name or name != name.strip():
        raise ValueError(f"not a host name or IP address: {name!r}")
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _serial_number(serial: str) -> int:
    try:
        number = int(serial, 16)
    except ValueError:
        raise ValueError(f"not a hexadecimal serial number: {serial!r}") from None
    if number <= 0:
        raise ValueError(f"serial numbers are positive: {serial!r}")
    return number


def _revoked_certificate(serial: int, entry: RevokedEntry) -> x509.RevokedCertificate:
    if entry.reason not in REVOCATION_REASONS:
        raise ValueError(f"revocation reason {entry.reason!r} is not one of {REVOCATION_REASONS}")
    if entry.revoked_at.tzinfo is None:
        raise ValueError(f"revoked_at of {entry.serial} has no time zone")
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        # Whole seconds, as the CRL stores them: write_crl compares entries with the file's.
        .revocation_date(entry.revoked_at.astimezone(UTC).replace(microsecond=0))
    )
    # RFC 5280 5.3.1: 'unspecified' is expressed by leaving the reason code out.
    if entry.reason != "unspecified":
        builder = builder.add_extension(
            x509.CRLReason(x509.ReasonFlags[entry.reason]), critical=False
        )
    return builder.build()


def _crl_number(crl: x509.CertificateRevocationList | None) -> int:
    if crl is None:
        return 0
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def _same_entries(
    crl: x509.CertificateRevocationList, entries: Iterable[x509.RevokedCertificate]
) -> bool:
    def key(entry: x509.RevokedCertificate) -> tuple[int, datetime, str]:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
        except x509.ExtensionNotFound:
            reason = "unspecified"
        return entry.serial_number, entry.revocation_date_utc, reason

    return sorted(map(key, crl)) == sorted(map(key, entries))
