"""Claim codes: the one-time secret an operator types to enrol a controller.

A code is 16 characters from a 31-letter alphabet without look-alikes (no 0/O, 1/I/L), shown
in groups of four: ``7KQM-X4RT-9ZHC-PW2N`` (about 79 bits). Case, dashes and spaces do not
matter when it is typed back.

Only a hash is stored: ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (salt and hash in unpadded
URL-safe base64), so a stored value says how to check it and the parameters can change
without invalidating old codes.

Why a small work factor (n = 2^11, 2 MiB, ~2.5 ms a code here): a code is ~79 random bits,
not a password. Guessing one offline from a leaked hash at a trillion SHA-256-speed guesses a
second would take ~19,000 years; the work factor adds nothing to that, it only makes a leaked
table memory-hard to attack (defence in depth). Codes hashed before this changed (n = 2^14,
16 MiB, ~25 ms) still verify. What the cost did matter for is issuing codes in bulk: at
2^14, the api's import of 10,000 controllers spent 220 s hashing (docs/benchmarks.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
GROUPS = 4
GROUP_LENGTH = 4
CODE_LENGTH = GROUPS * GROUP_LENGTH

# scrypt work factor for ~79-bit random codes (see above): 2 MiB, ~2.5 ms here.
SCRYPT_N = 2**11
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
# Bounds for parameters read back from the database, so a corrupted row cannot make a check
# take minutes or gigabytes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEMORY = 2**28  # 256 MiB
_ALLOWED = frozenset(ALPHABET)
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def generate_claim_code() -> str:
    """A new random code, grouped for reading aloud: ``XXXX-XXXX-XXXX-XXXX``."""
    chars = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(chars[i : i + GROUP_LENGTH] for i in range(0, CODE_LENGTH, GROUP_LENGTH))


def normalize_claim_code(code: str) -> str:
    """The canonical form that is hashed: upper case, without dashes or whitespace.

    Raises ValueError when the result cannot be a claim code.
    """
    canonical = "".join(ch for ch in code.upper() if ch != "-" and not ch.isspace())
    if len(canonical) != CODE_LENGTH or not set(canonical) <= _ALLOWED:
        raise ValueError(
            f"a claim code is {CODE_LENGTH} characters from {ALPHABET} (dashes optional)"
        )
    return canonical


def hash_claim_code(code: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Hash a code for storage, with a fresh random salt."""
    _check_parameters(n, r, p)
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _derive(normalize_claim_code(code), salt, n, r, p, length=_HASH_BYTES)
    return f"scrypt${n}${r}${p}${_b64encode(salt)}${_b64encode(digest)}"


def verify_claim_code(code: str, stored: str) -> bool:
    """True when ``code`` is the code behind ``stored`` (a hash_claim_code result).

    A malformed *code* is simply wrong (False); a malformed *stored* value is a bug or a
    corrupted row and raises ValueError, rather than quietly refusing every enrolment.
    """
    n, r, p, salt, expected = _parse(stored)
    try:
        canonical = normalize_claim_code(code)
    except ValueError:
        return False
    actual = _derive(canonical, salt, n, r, p, length=len(expected))
    return hmac.compare_digest(actual, expected)


def _derive(canonical: str, salt: bytes, n: int, r: int, p: int, *, length: int) -> bytes:
    # OpenSSL's default memory cap (32 MiB) is below what larger n need: allow what n asks for.
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(
        canonical.encode("ascii"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length
    )


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a claim code hash (expected scrypt$n$r$p$salt$hash)")
    try:
        n, r, p = (int(part) for part in parts[1:4])
        salt, digest = _b64decode(parts[4]), _b64decode(parts[5])
    except ValueError as exc:
        raise ValueError(f"malformed claim code hash: {exc}") from exc
    _check_parameters(n, r, p)
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("malformed claim code hash: salt or hash too short")
    return n, r, p, salt, digest


def _check_parameters(n: int, r: int, p: int) -> None:
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0):
        raise ValueError(f"scrypt n must be a power of two between 2 and {_MAX_N}")
    if not (1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError(f"scrypt r must be 1..{_MAX_R} and p 1..{_MAX_P}")
    if 128 * r * n > _MAX_MEMORY:
        raise ValueError("scrypt n * r asks for more than 256 MiB")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or any(ch not in _B64_CHARS for ch in text):
        raise ValueError("bad base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
