"""Key pairs: which ones certgen makes, which ones it accepts from devices, and PEM encoding."""

from __future__ import annotations

from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

KeyAlgorithm = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

RSA_BITS = 3072  # what certgen generates: NIST's 128-bit security level, like P-256
MIN_RSA_BITS = 2048  # what certgen accepts from a device
ACCEPTED_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}


def generate(algorithm: KeyAlgorithm = "ec") -> PrivateKey:
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: PrivateKey) -> bytes:
    # Unencrypted PKCS#8: the file mode protects it, and Mosquitto and paho read it as is.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private(pem: bytes) -> PrivateKey:
    """Parse a PEM private key; ValueError if it is damaged or not EC/RSA."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported key type {type(key).__name__} (expected EC or RSA)")
    return key


def describe(key: CertificatePublicKeyTypes) -> str:
    """'EC P-256', 'RSA 2048 bits', 'Ed25519', … for messages a person reads."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {ACCEPTED_CURVES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits"
    return type(key).__name__.removeprefix("_").removesuffix("PublicKey") or "unknown"


def unacceptable(key: CertificatePublicKeyTypes) -> str | None:
    """Why a device's key cannot be certified, or None when it can."""
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ACCEPTED_CURVES:
        return None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return None
    return (
        f"the CSR's key is {describe(key)}; use EC P-256, EC P-384 or RSA of at least "
        f"{MIN_RSA_BITS} bits"
    )


def same_public_key(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    def spki(key: CertificatePublicKeyTypes) -> bytes:
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    return spki(a) == spki(b)
