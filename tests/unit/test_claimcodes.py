"""Claim codes: typable, hashed with scrypt, checked in constant time."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f2pipe_shared.claimcodes import (
    ALPHABET,
    generate_claim_code,
    hash_claim_code,
    normalize_claim_code,
    verify_claim_code,
)

CODE_FORMAT = re.compile(rf"^[{ALPHABET}]{{4}}(-[{ALPHABET}]{{4}}){{3}}$")
# Cheap parameters where a test hashes many times; the format is the same.
FAST = {"n": 16, "r": 1, "p": 1}


def test_alphabet_has_no_look_alikes() -> None:
    assert not set("01OIL") & set(ALPHABET)
    assert len(set(ALPHABET)) == len(ALPHABET) == 31


def test_generated_codes_are_grouped_and_random() -> None:
    codes = {generate_claim_code() for _ in range(500)}
    assert len(codes) == 500
    assert all(CODE_FORMAT.match(code) for code in codes)


def test_hash_is_self_describing_and_salted() -> None:
    code = generate_claim_code()
    first, second = hash_claim_code(code), hash_claim_code(code)
    assert first != second  # a fresh salt each time
    scheme, n, r, p, salt, digest = first.split("$")
    assert (scheme, n, r, p) == ("scrypt", "2048", "8", "1")
    assert salt
    assert digest
    assert code not in first
    assert code.replace("-", "") not in first


def test_the_right_code_verifies_however_it_is_typed() -> None:
    code = generate_claim_code()
    stored = hash_claim_code(code)
    assert verify_claim_code(code, stored)
    assert verify_claim_code(code.lower(), stored)
    assert verify_claim_code(code.replace("-", ""), stored)
    assert verify_claim_code(" " + code.replace("-", " ") + "\n", stored)


def test_a_wrong_or_malformed_code_does_not_verify() -> None:
    code = generate_claim_code()
    stored = hash_claim_code(code, **FAST)
    other = generate_claim_code()
    assert not verify_claim_code(other, stored)
    assert not verify_claim_code(code[:-1], stored)
    assert not verify_claim_code(code + "A", stored)
    assert not verify_claim_code("", stored)
    assert not verify_claim_code(code.replace(code[0], "0"), stored)  # 0 is not in the alphabet


def test_a_tampered_hash_does_not_verify() -> None:
    code = generate_claim_code()
    scheme, n, r, p, salt, digest = hash_claim_code(code, **FAST).split("$")
    flipped = ("B" if digest[0] == "A" else "A") + digest[1:]
    assert not verify_claim_code(code, "$".join([scheme, n, r, p, salt, flipped]))
    other_salt = ("B" if salt[0] == "A" else "A") + salt[1:]
    assert not verify_claim_code(code, "$".join([scheme, n, r, p, other_salt, digest]))


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext-code",
        "bcrypt$16$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "scrypt$16384$8$1$c2FsdHNhbHQ",
        "scrypt$abc$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "scrypt$1000$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",  # n not a power of two
        "scrypt$1073741824$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",  # n beyond the bound
        "scrypt$16384$8$1$c2F*dHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",  # not base64
        "scrypt$16384$8$1$c2E$aGFzaGhhc2hoYXNoaGFzaA",  # salt too short
    ],
)
def test_a_malformed_stored_value_is_an_error_not_a_no(stored: str) -> None:
    with pytest.raises(ValueError, match=r"hash|scrypt"):
        verify_claim_code(generate_claim_code(), stored)


def test_hashing_refuses_something_that_is_not_a_code() -> None:
    with pytest.raises(ValueError, match="claim code"):
        hash_claim_code("hunter2")
    with pytest.raises(ValueError, match="scrypt n"):
        hash_claim_code(generate_claim_code(), n=1000)


def test_hashes_with_other_parameters_still_verify() -> None:
    code = generate_claim_code()
    assert verify_claim_code(code, hash_claim_code(code, n=2**15, r=8, p=1))
    # what every code was hashed with before the factor was cut (claimcodes.py says why)
    assert verify_claim_code(code, hash_claim_code(code, n=2**14, r=8, p=1))
    assert verify_claim_code(code, hash_claim_code(code, **FAST))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), min_size=16, max_size=16), st.data())
def test_normalisation_ignores_case_dashes_and_spaces(
    chars: list[str], data: st.DataObject
) -> None:
    canonical = "".join(chars)
    noisy = "".join(
        data.draw(st.sampled_from([ch, ch.lower()])) + data.draw(st.sampled_from(["", "-", " "]))
        for ch in canonical
    )
    assert normalize_claim_code(noisy) == canonical
    assert verify_claim_code(noisy, hash_claim_code(canonical, **FAST))
