"""The CA core: bootstrap, loading, signing device CSRs, the CRL."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from f2pipe_certgen.ca import (
    CaError,
    CertificateAuthority,
    CsrError,
    IssuedCertificate,
    RevokedEntry,
)
from f2pipe_shared.settings import CaSettings

DEVICE = "f2-a1b2c3d4e5f6"


@pytest.fixture
def settings(tmp_path: Path) -> CaSettings:
    return CaSettings(ca_dir=str(tmp_path / "ca"), issued_dir=str(tmp_path / "issued"))


@pytest.fixture
def ca(settings: CaSettings) -> CertificateAuthority:
    authority, _ = CertificateAuthority.bootstrap(settings)
    return authority


def snapshot(*dirs: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for d in dirs for path in sorted(d.iterdir())}


def load_cert(pem: str | bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def csr_for(key: CertificateIssuerPrivateKeyTypes, cn: str = DEVICE) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_spki(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_creates_ca_broker_services_and_an_empty_crl(settings: CaSettings) -> None:
    ca, issued = CertificateAuthority.bootstrap(
        settings, broker_sans=["broker.example", "10.0.0.7"]
    )
    ca_dir, issued_dir = Path(settings.ca_dir), Path(settings.issued_dir)

    assert {(c.cn, c.kind) for c in issued} == {
        ("mqtt_broker", "broker"),
        ("svc-bridge", "service"),
        ("svc-operator", "service"),
        ("svc-api-commands", "service"),
    }
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key", "crl.pem"]
    assert sorted(p.name for p in issued_dir.iterdir()) == [
        "api-commands.crt",
        "api-commands.key",
        "bridge.crt",
        "bridge.key",
        "broker.crt",
        "broker.key",
        "operator.crt",
        "operator.key",
    ]
    ca_cert = load_cert(ca.certificate_pem)
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_key = ca_cert.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert ca_key.curve.name == "secp256r1"

    broker = load_cert((issued_dir / "broker.crt").read_bytes())
    broker.verify_directly_issued_by(ca_cert)
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mqtt_broker", "localhost", "broker.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
        "10.0.0.7",
    ]
    usage = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]

    for name in ("bridge", "operator", "api-commands"):
        cert = load_cert((issued_dir / f"{name}.crt").read_bytes())
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert cert.subject.rfc4514_string() == f"CN=svc-{name}"

    crl = x509.load_pem_x509_crl(ca.crl_pem().encode())
    assert len(crl) == 0
    assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]


def test_bootstrap_again_creates_nothing_and_changes_no_file(settings: CaSettings) -> None:
    CertificateAuthority.bootstrap(settings)
    before = snapshot(Path(settings.ca_dir), Path(settings.issued_dir))

    _, issued = CertificateAuthority.bootstrap(settings)

    assert issued == []
    assert snapshot(Path(settings.ca_dir), Path(settings.issued_dir)) == before


def test_bootstrap_issues_only_what_is_missing(settings: CaSettings) -> None:
    CertificateAuthority.bootstrap(settings)
    issued_dir = Path(settings.issued_dir)
    (issued_dir / "bridge.key").unlink()
    before = snapshot(Path(settings.ca_dir))
    broker_before = (issued_dir / "broker.crt").read_bytes()

    _, issued = CertificateAuthority.bootstrap(settings)

    assert [c.cn for c in issued] == ["svc-bridge"]
    assert snapshot(Path(settings.ca_dir)) == before
    assert (issued_dir / "broker.crt").read_bytes() == broker_before
    new = load_cert((issued_dir / "bridge.crt").read_bytes())
    key = serialization.load_pem_private_key((issued_dir / "bridge.key").read_bytes(), None)
    assert spki(new) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("lost", ["ca.crt", "ca.key"])
def test_bootstrap_never_replaces_half_a_ca(settings: CaSettings, lost: str) -> None:
    CertificateAuthority.bootstrap(settings)
    ca_dir = Path(settings.ca_dir)
    (ca_dir / lost).unlink()
    before = snapshot(ca_dir)

    with pytest.raises(CaError, match=rf"{lost} is missing"):
        CertificateAuthority.bootstrap(settings)

    assert snapshot(ca_dir) == before


def test_damaged_ca_key_stops_bootstrap_without_quoting_it(settings: CaSettings) -> None:
    CertificateAuthority.bootstrap(settings)
    key_path = Path(settings.ca_dir) / "ca.key"
    damaged = key_path.read_bytes()[:-60] + b"\n-----END PRIVATE KEY-----\n"
    key_path.write_bytes(damaged)

    with pytest.raises(CaError, match=r"ca\.key is damaged") as caught:
        CertificateAuthority.bootstrap(settings)

    body = b"".join(damaged.splitlines()[1:-1]).decode()
    assert body[:20] not in str(caught.value)


def test_damaged_ca_certificate_stops_bootstrap(settings: CaSettings) -> None:
    CertificateAuthority.bootstrap(settings)
    (Path(settings.ca_dir) / "ca.crt").write_text("not a certificate\n")

    with pytest.raises(CaError, match=r"ca\.crt is damaged"):
        CertificateAuthority.bootstrap(settings)


def test_unreadable_ca_key_stops_bootstrap(settings: CaSettings) -> None:
    CertificateAuthority.bootstrap(settings)
    key_path = Path(settings.ca_dir) / "ca.key"
    # A directory in its place: unreadable even for root, who ignores file modes.
    key_path.unlink()
    key_path.mkdir()

    with pytest.raises(CaError, match=r"cannot read .*ca\.key"):
        CertificateAuthority.bootstrap(settings)


def test_ca_key_of_another_ca_stops_bootstrap(settings: CaSettings, tmp_path: Path) -> None:
    CertificateAuthority.bootstrap(settings)
    other = CaSettings(ca_dir=str(tmp_path / "other"), issued_dir=str(tmp_path / "other-issued"))
    CertificateAuthority.bootstrap(other)
    (Path(settings.ca_dir) / "ca.key").write_bytes((tmp_path / "other" / "ca.key").read_bytes())

    with pytest.raises(CaError, match=r"ca\.key does not match .*ca\.crt"):
        CertificateAuthority.load(Path(settings.ca_dir))


def test_service_certificate_of_another_ca_stops_bootstrap(
    settings: CaSettings, tmp_path: Path
) -> None:
    CertificateAuthority.bootstrap(settings)
    other = CaSettings(ca_dir=str(tmp_path / "other"), issued_dir=str(tmp_path / "other-issued"))
    CertificateAuthority.bootstrap(other)
    for suffix in ("crt", "key"):
        name = f"bridge.{suffix}"
        (Path(settings.issued_dir) / name).write_bytes(
            (tmp_path / "other-issued" / name).read_bytes()
        )

    with pytest.raises(CaError, match=r"bridge\.crt is damaged or was not issued by"):
        CertificateAuthority.bootstrap(settings)


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_every_private_key_is_0600_even_with_an_open_umask(
    settings: CaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key must never be readable by others, not even between a create and a chmod: so no
    # chmod may be needed at all.
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("chmod after creation")

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(os, "fchmod", refuse)
    CertificateAuthority.bootstrap(settings)

    modes = {
        path.name: stat.S_IMODE(path.stat().st_mode)
        for d in (Path(settings.ca_dir), Path(settings.issued_dir))
        for path in d.iterdir()
    }
    keys = {name: mode for name, mode in modes.items() if name.endswith(".key")}
    assert keys == dict.fromkeys(
        ["ca.key", "broker.key", "bridge.key", "operator.key", "api-commands.key"], 0o600
    )
    assert {mode for name, mode in modes.items() if name not in keys} == {0o644}


def test_rsa_bootstrap_makes_3072_bit_keys(settings: CaSettings) -> None:
    ca, _ = CertificateAuthority.bootstrap(
        settings, key_algorithm="rsa", service_identities=["bridge"]
    )

    ca_key = load_cert(ca.certificate_pem).public_key()
    broker = load_cert((Path(settings.issued_dir) / "broker.crt").read_bytes())
    assert isinstance(ca_key, rsa.RSAPublicKey)
    assert ca_key.key_size == 3072
    assert isinstance(broker.public_key(), rsa.RSAPublicKey)
    assert broker.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


def test_load_finds_the_ca_that_bootstrap_made(
    settings: CaSettings, ca: CertificateAuthority
) -> None:
    assert CertificateAuthority.load(Path(settings.ca_dir)).certificate_pem == ca.certificate_pem


def test_service_identity_names_are_checked(settings: CaSettings) -> None:
    with pytest.raises(ValueError, match="service identity"):
        CertificateAuthority.bootstrap(settings, service_identities=["../escape"])


# --- signing CSRs -----------------------------------------------------------------------------


KeyMaker = Callable[[], CertificateIssuerPrivateKeyTypes]
ACCEPTED_KEYS: dict[str, KeyMaker] = {
    "EC P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EC P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "RSA 2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


@pytest.mark.parametrize("kind", ACCEPTED_KEYS)
def test_sign_csr_issues_a_client_certificate_for_the_key(
    ca: CertificateAuthority, kind: str
) -> None:
    key = ACCEPTED_KEYS[kind]()
    issued = ca.sign_csr(csr_for(key), cn=DEVICE, days=365)

    cert = load_cert(issued.pem)
    cert.verify_directly_issued_by(load_cert(ca.certificate_pem))
    assert spki(cert) == key_spki(key)
    assert cert.subject.rfc4514_string() == f"CN={DEVICE}"
    assert issued.cn == DEVICE
    assert issued.kind == "device"
    assert issued.serial == format(cert.serial_number, "x")
    assert issued.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert cert.serial_number.bit_length() <= 159
    assert issued.not_after == cert.not_valid_after_utc
    assert issued.not_before == cert.not_valid_before_utc
    assert abs(issued.not_after - (datetime.now(UTC) + timedelta(days=365))) < timedelta(seconds=5)
    extensions = cert.extensions
    assert list(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment is isinstance(key, rsa.RSAPrivateKey)
    assert not usage.key_cert_sign
    ski = extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = load_cert(ca.certificate_pem).extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    )
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert aki.key_identifier == ca_ski.value.digest


def test_sign_csr_ignores_the_extensions_a_csr_asks_for(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, DEVICE),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mallory"),
                ]
            )
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), False)
        .sign(key, hashes.SHA256())
    )

    cert = load_cert(
        ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), cn=DEVICE, days=30).pem
    )

    assert cert.subject.rfc4514_string() == f"CN={DEVICE}"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


WEAK_KEYS: dict[str, KeyMaker] = {
    "RSA 1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
    "EC secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
    "Ed25519": ed25519.Ed25519PrivateKey.generate,
}


@pytest.mark.parametrize("kind", WEAK_KEYS)
def test_sign_csr_refuses_keys_outside_the_policy(ca: CertificateAuthority, kind: str) -> None:
    with pytest.raises(CsrError, match="use EC P-256, EC P-384 or RSA") as caught:
        ca.sign_csr(csr_for(WEAK_KEYS[kind]()), cn=DEVICE, days=30)

    assert caught.value.reason == "weak_key"
    if kind == "RSA 1024":
        assert "RSA 1024 bits" in str(caught.value)


def test_sign_csr_refuses_another_common_name(ca: CertificateAuthority) -> None:
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()), cn="f2-000000000000")

    with pytest.raises(CsrError) as caught:
        ca.sign_csr(csr, cn=DEVICE, days=30)

    assert caught.value.reason == "wrong_cn"
    assert "'f2-000000000000'" in str(caught.value)
    assert f"CN={DEVICE}" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    ["", "hello", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"],
)
def test_sign_csr_refuses_what_is_not_a_csr(ca: CertificateAuthority, text: str) -> None:
    with pytest.raises(CsrError) as caught:
        ca.sign_csr(text, cn=DEVICE, days=30)

    assert caught.value.reason == "bad_csr"


def test_sign_csr_refuses_a_tampered_csr(ca: CertificateAuthority) -> None:
    # Signed for one device, then edited to name another: the signature no longer verifies.
    pem = csr_for(ec.generate_private_key(ec.SECP256R1()), cn="f2-000000000000")
    der = x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"f2-000000000000", DEVICE.encode())
    tampered_pem = x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM)

    with pytest.raises(CsrError, match="signature") as caught:
        ca.sign_csr(tampered_pem.decode(), cn=DEVICE, days=30)

    assert caught.value.reason == "bad_csr"


def test_a_device_certificate_can_never_carry_a_service_name(ca: CertificateAuthority) -> None:
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()), cn="svc-bridge")

    with pytest.raises(ValueError, match="not a device CN"):
        ca.sign_csr(csr, cn="svc-bridge", days=30)
    with pytest.raises(ValueError, match="not a device CN"):
        ca.issue_key_and_certificate("svc-bridge", days=30)


def test_issue_key_and_certificate_returns_a_p256_key_and_stores_nothing(
    settings: CaSettings, ca: CertificateAuthority
) -> None:
    before = snapshot(Path(settings.ca_dir), Path(settings.issued_dir))

    issued, key_pem = ca.issue_key_and_certificate(DEVICE, days=10)

    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    cert = load_cert(issued.pem)
    assert spki(cert) == key_spki(key)
    assert isinstance(issued, IssuedCertificate)
    assert (issued.cn, issued.kind) == (DEVICE, "device")
    assert snapshot(Path(settings.ca_dir), Path(settings.issued_dir)) == before


def test_a_service_certificate_can_be_issued(ca: CertificateAuthority) -> None:
    issued, _ = ca.issue_key_and_certificate("svc-grafana", days=30, kind="service")

    assert (issued.cn, issued.kind) == ("svc-grafana", "service")


# --- the CRL ----------------------------------------------------------------------------------


def test_crl_lists_revoked_serials_with_reasons_and_verifies(
    settings: CaSettings, ca: CertificateAuthority
) -> None:
    first, _ = ca.issue_key_and_certificate(DEVICE, days=30)
    second, _ = ca.issue_key_and_certificate("f2-00000000000b", days=30)
    revoked_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    pem = ca.write_crl(
        [
            RevokedEntry(first.serial, revoked_at, "key_compromise"),
            RevokedEntry(second.serial, revoked_at, "unspecified"),
        ],
        next_update_days=3,
    )

    crl = x509.load_pem_x509_crl(pem.encode())
    assert crl.is_signature_valid(load_cert(ca.certificate_pem).public_key())  # type: ignore[arg-type]
    entries = {format(r.serial_number, "x"): r for r in crl}
    assert set(entries) == {first.serial, second.serial}
    assert entries[first.serial].revocation_date_utc == revoked_at
    reason = entries[first.serial].extensions.get_extension_for_class(x509.CRLReason)
    assert reason.value.reason is x509.ReasonFlags.key_compromise
    # RFC 5280: "unspecified" is expressed by leaving the reason code out.
    with pytest.raises(x509.ExtensionNotFound):
        entries[second.serial].extensions.get_extension_for_class(x509.CRLReason)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - datetime.now(UTC) > timedelta(days=3) - timedelta(seconds=5)
    assert ca.crl_pem() == pem
    assert ca.crl_next_update == crl.next_update_utc
    path = Path(settings.ca_dir) / "crl.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def crl_number(pem: str) -> int:
    crl = x509.load_pem_x509_crl(pem.encode())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_crl_numbers_only_grow(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    lists = [
        [RevokedEntry(format(n, "x"), now, "superseded") for n in range(1, k)] for k in (2, 3, 4)
    ]

    numbers = [crl_number(ca.write_crl(entries)) for entries in lists]

    assert numbers == sorted(set(numbers))


def test_crl_with_the_same_entries_is_kept_while_fresh(
    settings: CaSettings, ca: CertificateAuthority
) -> None:
    # Every rewrite restarts the broker (run-broker.sh): a routine refresh must not rewrite.
    entries = [RevokedEntry("1f", datetime.now(UTC).replace(microsecond=123456), "superseded")]
    first = ca.write_crl(entries)
    inode = (Path(settings.ca_dir) / "crl.pem").stat().st_ino

    again = ca.write_crl(list(entries))

    assert again == first
    assert (Path(settings.ca_dir) / "crl.pem").stat().st_ino == inode


def test_crl_past_half_its_validity_is_signed_again(ca: CertificateAuthority) -> None:
    entries = [RevokedEntry("1f", datetime.now(UTC), "superseded")]
    first = ca.write_crl(entries, next_update_days=1)

    # Asking for 7 days: a CRL with 1 day left is past half of that, so it is renewed.
    renewed = ca.write_crl(entries, next_update_days=7)

    assert renewed != first
    assert crl_number(renewed) > crl_number(first)


def test_crl_refuses_an_unknown_reason(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="revocation reason"):
        ca.write_crl([RevokedEntry("1f", datetime.now(UTC), "bored")])


def test_crl_replaces_the_file_atomically(settings: CaSettings, ca: CertificateAuthority) -> None:
    path = Path(settings.ca_dir) / "crl.pem"
    inode = path.stat().st_ino

    ca.write_crl([RevokedEntry("1f", datetime.now(UTC), "key_compromise")])

    # A new file renamed into place: a reader holding the old one never sees it half-written.
    assert path.stat().st_ino != inode
    assert [p.name for p in Path(settings.ca_dir).iterdir() if p.name.startswith(".")] == []


def test_sign_csr_refuses_a_sha1_signed_csr_saying_so(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    # cryptography will not sign with SHA-1; the openssl command line still does.
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is needed to make a SHA-1 CSR")
    key = tmp_path / "key.pem"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    made = subprocess.run(
        [openssl, "req", "-new", "-key", str(key), "-subj", f"/CN={DEVICE}", "-sha1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip

    with pytest.raises(CsrError, match="signed with SHA-1") as caught:
        ca.sign_csr(made.stdout, cn=DEVICE, days=30)

    assert caught.value.reason == "bad_csr"
    assert "altered" not in str(caught.value)
