"""certgen's enrolment decisions against a fake registry and a fake clock, no PostgreSQL; and
the app's dependencies wired around them (the throttle's own arithmetic:
test_certgen_throttle.py)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from pydantic import SecretStr

from f2pipe_certgen import crl, service
from f2pipe_certgen.app import create_app
from f2pipe_certgen.ca import CertificateAuthority, IssuedCertificate, RevokedEntry
from f2pipe_certgen.deps import Parts
from f2pipe_certgen.enrolment import REFUSED, Enrolment
from f2pipe_certgen.limits import MAX_BODY_BYTES
from f2pipe_certgen.lockout import ClaimCheck, Throttle, ThrottlePolicy
from f2pipe_certgen.metrics import CertgenMetrics
from f2pipe_certgen.ports import (
    CertificateQuery,
    CertificateRow,
    Controller,
    RevocationReason,
)
from f2pipe_certgen.problems import ProblemError
from f2pipe_certgen.settings import CertgenSettings, Settings
from f2pipe_certgen.store import PostgresStore
from f2pipe_shared.certificates import EnrollRequest, EnrollResponse
from f2pipe_shared.claimcodes import hash_claim_code, verify_claim_code
from f2pipe_shared.settings import CaSettings, CommonSettings, PostgresSettings
from f2pipe_shared.topics import normalize_mac
from tests.unit.certgen_fakes import T0, FakeClock

MAC, OTHER_MAC, NO_CODE_MAC = "aabbccddee01", "aabbccddee02", "aabbccddee03"
UNKNOWN_MAC = "aabbccddee99"
CODE = "7KQM-X4RT-9ZHC-PW2N"
WRONG = "2222-3333-4444-5555"
DEVICE_DAYS = 30
# Small numbers: a source may fail 3 times (one more every minute), a MAC 5 times.
POLICY = ThrottlePolicy(
    source_failures=3, source_refill=60, mac_failures=5, mac_refill=60, max_entries=100
)
ATTACKER, DEVICE = "203.0.113.66", "198.51.100.7"
# A cheap work factor: scrypt's cost is not under test here (the dummy's must match it).
CHEAP = {"n": 2**4}


@dataclass
class FakeStore:
    """`ports.CertificateStore` in memory. A transaction that raises is rolled back."""

    clock: FakeClock
    controllers: dict[str, Controller] = field(default_factory=dict)
    certificates: dict[str, CertificateRow] = field(default_factory=dict)
    mac_locks: list[str] = field(default_factory=list)
    commits: int = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTransaction]:
        before = copy.deepcopy(self.certificates)
        try:
            yield FakeTransaction(store=self)
        except BaseException:
            self.certificates = before
            raise
        self.commits += 1

    def rows_of(self, cn: str) -> list[CertificateRow]:
        return [row for row in self.certificates.values() if row.cn == cn]


@dataclass
class FakeTransaction:
    """A transaction of `FakeStore`."""

    store: FakeStore

    async def lock_mac(self, mac: str) -> None:
        self.store.mac_locks.append(mac)

    async def find_controller(self, mac: str) -> Controller | None:
        return self.store.controllers.get(mac)

    async def record_certificate(self, cert: IssuedCertificate, device_id: int | None) -> None:
        row = CertificateRow(
            serial=cert.serial,
            cn=cert.cn,
            kind=cert.kind,
            device_id=device_id,
            not_before=cert.not_before,
            not_after=cert.not_after,
            status="valid",
            revoked_at=None,
            revocation_reason=None,
            fingerprint_sha256=cert.fingerprint_sha256,
            created_at=self.store.clock.now(),
        )
        self.store.certificates.setdefault(cert.serial, row)

    async def revoke_valid_of_cn(self, cn: str, reason: RevocationReason) -> list[CertificateRow]:
        valid = [
            row
            for row in self.store.certificates.values()
            if row.cn == cn and row.kind == "device" and row.status == "valid"
        ]
        return [self._revoke(row, reason) for row in valid]

    async def revoke_serial(
        self, serial: str, reason: RevocationReason
    ) -> tuple[CertificateRow | None, bool]:
        row = self.store.certificates.get(serial)
        if row is None or row.status == "revoked":
            return row, False
        return self._revoke(row, reason), True

    async def list_certificates(self, query: CertificateQuery) -> tuple[list[CertificateRow], int]:
        rows = [
            row
            for row in self.store.certificates.values()
            if query.cn in (None, row.cn)
            and query.status in (None, row.status)
            and query.kind in (None, row.kind)
        ]
        rows.sort(key=lambda row: row.serial)
        rows.sort(key=lambda row: row.created_at, reverse=True)
        return rows[query.offset : query.offset + query.limit], len(rows)

    async def lock_crl(self) -> None:
        pass

    async def revoked_entries(self) -> list[RevokedEntry]:
        return [
            RevokedEntry(row.serial, row.revoked_at, row.revocation_reason or "unspecified")
            for row in self.store.certificates.values()
            if row.revoked_at is not None
        ]

    def _revoke(self, row: CertificateRow, reason: RevocationReason) -> CertificateRow:
        revoked = replace(
            row, status="revoked", revoked_at=self.store.clock.now(), revocation_reason=reason
        )
        self.store.certificates[row.serial] = revoked
        return revoked


@dataclass
class CountingVerifier:
    """`verify_claim_code`, counting which stored hashes it was asked to check against."""

    checked: list[str] = field(default_factory=list)

    def __call__(self, code: str, stored: str) -> bool:
        self.checked.append(stored)
        return verify_claim_code(code, stored)


@dataclass
class World:
    clock: FakeClock
    store: FakeStore
    ca: CertificateAuthority
    metrics: CertgenMetrics
    throttle: Throttle
    claims: ClaimCheck
    verifier: CountingVerifier
    enrolment: Enrolment

    def enrol(
        self, mac: str = MAC, code: str = CODE, csr: str | None = None, source: str = DEVICE
    ) -> EnrollResponse:
        request = EnrollRequest(mac=mac, claim_code=code, csr_pem=csr)
        return asyncio.run(self.enrolment.enrol(request, source))

    def refusal(
        self, mac: str = MAC, code: str = CODE, csr: str | None = None, source: str = DEVICE
    ) -> ProblemError:
        with pytest.raises(ProblemError) as refused:
            self.enrol(mac, code, csr, source)
        return refused.value

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def ca_settings(tmp_path: Path) -> CaSettings:
    return CaSettings(ca_dir=str(tmp_path / "ca"), issued_dir=str(tmp_path / "issued"))


@pytest.fixture
def world(tmp_path: Path) -> World:
    clock = FakeClock()
    store = FakeStore(clock)
    store.controllers = {
        MAC: Controller(1, MAC, hash_claim_code(CODE, **CHEAP)),
        OTHER_MAC: Controller(2, OTHER_MAC, hash_claim_code(CODE, **CHEAP)),
        NO_CODE_MAC: Controller(3, NO_CODE_MAC, None),
    }
    ca, _ = CertificateAuthority.bootstrap(ca_settings(tmp_path), clock=clock)
    metrics = CertgenMetrics()
    verifier = CountingVerifier()
    claims = ClaimCheck(verify=verifier, dummy_hash=hash_claim_code("9999-9999-9999-9999", **CHEAP))
    throttle = Throttle(POLICY, clock)
    enrolment = Enrolment(
        ca=ca, db=store, metrics=metrics, throttle=throttle, claims=claims, device_days=DEVICE_DAYS
    )
    return World(clock, store, ca, metrics, throttle, claims, verifier, enrolment)


def csr_for(cn: str, key: ec.EllipticCurvePrivateKey | None = None) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key or ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


# --- who may enrol ------------------------------------------------------------------------------


def test_the_right_code_with_a_csr_gets_a_certificate_valid_from_the_clocks_now(
    world: World,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    answer = world.enrol(csr=csr_for(f"f2-{MAC}", key))

    cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode())
    cert.verify_directly_issued_by(world.ca.certificate)
    assert cert.public_key() == key.public_key()
    assert answer.private_key_pem is None
    assert answer.not_after == T0 + timedelta(days=DEVICE_DAYS)
    assert answer.ca_certificate_pem == world.ca.certificate_pem
    [row] = world.store.rows_of(f"f2-{MAC}")
    assert (row.serial, row.device_id, row.status) == (answer.serial, 1, "valid")
    assert world.count("certgen_enrolments_total", flow="csr") == 1


def test_without_a_csr_the_key_is_generated_and_returned(world: World) -> None:
    answer = world.enrol()
    assert answer.private_key_pem is not None
    key = serialization.load_pem_private_key(answer.private_key_pem.encode(), password=None)
    cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode())
    assert cert.public_key() == key.public_key()
    assert world.count("certgen_enrolments_total", flow="generated") == 1


def test_an_unknown_mac_is_refused_as_a_wrong_code_would_be(world: World) -> None:
    unknown = world.refusal(UNKNOWN_MAC, WRONG)
    wrong = world.refusal(MAC, WRONG)
    no_code = world.refusal(NO_CODE_MAC, CODE)
    for refused in (unknown, wrong, no_code):
        assert (refused.reason, refused.detail, refused.headers) == (
            "enrolment_refused",
            REFUSED,
            {},
        )
        assert UNKNOWN_MAC not in refused.detail
    # What the client is not told, the log line and the metrics are.
    assert [r.cause for r in (unknown, wrong, no_code)] == [
        "unknown_mac",
        "wrong_claim_code",
        "no_claim_code",
    ]


def test_an_unknown_mac_and_a_controller_without_a_code_cost_a_dummy_hash_check(
    world: World,
) -> None:
    world.refusal(UNKNOWN_MAC, WRONG)
    world.refusal(NO_CODE_MAC, CODE)
    world.refusal(MAC, WRONG)
    dummy, stored = world.claims.dummy_hash, world.store.controllers[MAC].claim_code_hash
    assert world.verifier.checked == [dummy, dummy, stored]
    # Of the same work factor as a real code's: the time taken tells nothing either.
    assert dummy.split("$")[:4] == (stored or "").split("$")[:4]


def test_the_dummy_hash_never_lets_anyone_in(world: World) -> None:
    # Even the dummy's own code: an unknown MAC has nothing to enrol.
    refused = world.refusal(UNKNOWN_MAC, "9999-9999-9999-9999")
    assert refused.cause == "unknown_mac"
    assert world.verifier.checked == [world.claims.dummy_hash]


def test_the_default_dummy_hash_has_the_registrys_work_factor() -> None:
    dummy = ClaimCheck().dummy_hash
    assert dummy.split("$")[:4] == hash_claim_code(CODE).split("$")[:4]


def test_every_refused_claim_is_charged_to_the_source_and_the_mac(world: World) -> None:
    world.refusal(UNKNOWN_MAC, WRONG, source=ATTACKER)
    world.refusal(MAC, WRONG, source=ATTACKER)
    sources, macs = world.throttle.sources, world.throttle.macs
    assert sources.tokens(ATTACKER, T0.timestamp()) == 1
    assert macs.tokens(UNKNOWN_MAC, T0.timestamp()) == macs.tokens(MAC, T0.timestamp()) == 4
    assert DEVICE not in sources


def test_the_right_code_is_not_charged(world: World) -> None:
    world.enrol()
    assert len(world.throttle.sources) == len(world.throttle.macs) == 0


# --- throttling -----------------------------------------------------------------------------


def test_a_source_out_of_tokens_is_throttled_before_its_code_is_checked(world: World) -> None:
    for _ in range(3):
        assert world.refusal(code=WRONG, source=ATTACKER).reason == "enrolment_refused"
    checks = len(world.verifier.checked)

    refused = world.refusal(source=ATTACKER)  # even with the right code

    assert refused.reason == "locked_out"
    assert refused.headers == {"Retry-After": "60"}
    assert len(world.verifier.checked) == checks  # no scrypt for a throttled source
    world.clock.advance(seconds=59)
    assert world.refusal(source=ATTACKER).headers == {"Retry-After": "1"}
    world.clock.advance(seconds=1)
    assert world.enrol(source=ATTACKER).cn == f"f2-{MAC}"


def test_an_attacker_cannot_keep_the_device_from_enrolling(world: World) -> None:
    # An attacker hammering one MAC from many addresses, for hours.
    for hour in range(5):
        for n in range(50):
            with pytest.raises(ProblemError):
                world.enrol(MAC, WRONG, source=f"203.0.113.{n}")
        world.clock.advance(minutes=60)
        # The device, from its own address, with the right code: in, at once, every time.
        assert world.enrol(MAC, CODE, source=DEVICE).cn == f"f2-{MAC}", hour
    assert DEVICE not in world.throttle.sources


def test_a_mac_under_attack_allows_each_source_one_wrong_code_per_refill(world: World) -> None:
    for n in range(5):  # the MAC's budget, spent by five sources
        world.refusal(code=WRONG, source=f"203.0.113.{n}")
    # The next wrong code costs its source everything: throttled at once, not after three.
    world.refusal(code=WRONG, source=ATTACKER)
    assert world.refusal(code=WRONG, source=ATTACKER).reason == "locked_out"
    # Another MAC's failures from a fresh source cost one token, as before.
    world.refusal(OTHER_MAC, WRONG, source="192.0.2.99")
    assert world.throttle.sources.tokens("192.0.2.99", T0.timestamp()) == 2
    # And the device with the right code, from its own address, enrols.
    assert world.enrol(source=DEVICE).cn == f"f2-{MAC}"


def test_a_device_that_mistypes_on_a_mac_under_attack_waits_one_refill(world: World) -> None:
    for n in range(5):
        world.refusal(code=WRONG, source=f"203.0.113.{n}")
    world.refusal(code=WRONG, source=DEVICE)
    assert world.refusal(source=DEVICE).headers == {"Retry-After": "60"}
    world.clock.advance(minutes=1)
    assert world.enrol(source=DEVICE).cn == f"f2-{MAC}"


# --- what is issued -------------------------------------------------------------------------


def test_re_enrolment_supersedes_the_previous_certificate_and_lists_it_on_the_crl(
    world: World,
) -> None:
    first = world.enrol(csr=csr_for(f"f2-{MAC}"))
    world.clock.advance(days=1)
    second = world.enrol(csr=csr_for(f"f2-{MAC}"))

    rows = {row.serial: row for row in world.store.rows_of(f"f2-{MAC}")}
    assert (rows[first.serial].status, rows[first.serial].revocation_reason) == (
        "revoked",
        "superseded",
    )
    assert rows[second.serial].status == "valid"
    assert second.not_after == T0 + timedelta(days=1 + DEVICE_DAYS)
    crl = x509.load_pem_x509_crl(world.ca.crl_pem().encode())
    assert crl.get_revoked_certificate_by_serial_number(int(first.serial, 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(second.serial, 16)) is None
    assert world.count("certgen_revocations_total", reason="superseded") == 1


def test_the_crl_timer_says_rewritten_only_when_the_file_changed(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # A routine refresh keeps a fresh file with the same entries (the broker restarts on
    # every change); the log said "CRL rewritten" anyway.
    async def one_round() -> None:
        task = asyncio.create_task(crl.keep_fresh(world.store, world.ca, interval=3600))
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def said() -> list[tuple[str, int]]:
        timer = [r for r in caplog.records if r.name == "f2pipe_certgen.crl"]
        return [(r.getMessage(), r.__dict__["revoked"]) for r in timer]

    caplog.set_level(logging.DEBUG, logger="f2pipe_certgen.crl")
    asyncio.run(one_round())  # bootstrap's CRL: no entries, fresh
    assert said() == [("CRL unchanged: same entries, still fresh", 0)]

    world.enrol(csr=csr_for(f"f2-{MAC}"))
    world.clock.advance(days=1)
    world.enrol(csr=csr_for(f"f2-{MAC}"))  # supersedes the first: the CRL lists it
    caplog.clear()
    asyncio.run(one_round())
    assert said() == [("CRL unchanged: same entries, still fresh", 1)]

    world.clock.advance(days=4)  # past half-way to the next update: signed again
    caplog.clear()
    asyncio.run(one_round())
    assert said() == [("CRL rewritten", 1)]


@pytest.mark.parametrize(
    ("csr", "reason"),
    [
        (lambda: csr_for(f"f2-{OTHER_MAC}"), "wrong_cn"),
        (lambda: "-----BEGIN CERTIFICATE REQUEST-----\nnope\n", "bad_csr"),
    ],
)
def test_an_unusable_csr_is_refused_after_the_code_was_accepted(
    world: World, csr: Callable[[], str], reason: str
) -> None:
    refused = world.refusal(csr=csr())
    assert refused.reason == reason
    assert refused.detail[0].isupper()
    assert refused.detail.endswith(".")
    assert len(world.throttle.sources) == 0  # the code was right: nothing charged
    assert world.store.rows_of(f"f2-{MAC}") == []


# --- the app around it --------------------------------------------------------------------------


class Client:
    """Requests to the app in memory (no lifespan: the fake store needs no opening), each
    from the client address `source`."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    @property
    def throttle(self) -> Throttle:
        parts: Parts = self.app.state.certgen
        return parts.throttle

    def request(
        self, method: str, path: str, *, source: str = DEVICE, **options: Any
    ) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=(source, 50_000))
            async with httpx.AsyncClient(transport=transport, base_url="http://certgen") as http:
                return await http.request(method, path, **options)

        return asyncio.run(send())

    def get(self, path: str, **options: Any) -> httpx.Response:
        return self.request("GET", path, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self.request("POST", path, **options)


def app_client(world: World, tmp_path: Path, *, own: CertgenSettings | None = None,
               **ca: object) -> Client:  # fmt: skip
    """The app in memory over `world`, with these CA settings changed."""
    settings = Settings(
        common=CommonSettings(),
        ca=ca_settings(tmp_path).model_copy(update=ca),
        postgres=PostgresSettings(),
        certgen=own or CertgenSettings(),
    )
    app = create_app(world.ca, settings=settings, db=world.store, metrics=world.metrics,
                     throttle=POLICY, clock=world.clock, claims=world.claims)  # fmt: skip
    return Client(app)


@pytest.fixture
def client(world: World, tmp_path: Path) -> Client:
    return app_client(world, tmp_path, device_expiry=DEVICE_DAYS)


def test_the_app_enrols_through_its_dependencies(world: World, client: Client) -> None:
    response = client.post("/v1/enroll", json={"mac": MAC, "claim_code": CODE})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["not_after"].startswith("2030-01-31T12:00:00")
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "ca": "ok"}


def enrol_body(mac: str = MAC, code: str = CODE) -> dict[str, str]:
    return {"mac": mac, "claim_code": code}


def test_the_app_throttles_the_attacking_address_only_and_counts_it(
    world: World, client: Client
) -> None:
    for _ in range(3):
        wrong = client.post("/v1/enroll", json=enrol_body(code=WRONG), source=ATTACKER)
        assert wrong.status_code == 403
    world.clock.advance(seconds=59.5)

    refused = client.post("/v1/enroll", json=enrol_body(), source=ATTACKER)
    device = client.post("/v1/enroll", json=enrol_body(), source=DEVICE)

    body = assert_problem(refused, 429, "locked_out")
    assert refused.headers["retry-after"] == "1"
    assert "1 s" in body["detail"]
    assert device.status_code == 200, device.text
    assert world.count("certgen_enrolment_failures_total", reason="wrong_claim_code") == 3
    assert world.count("certgen_enrolment_failures_total", reason="locked_out") == 1
    assert (
        'certgen_enrolment_failures_total{reason="locked_out"} 1.0' in client.get("/metrics").text
    )


def test_the_app_answers_an_unknown_mac_byte_for_byte_as_a_wrong_code(
    world: World, client: Client
) -> None:
    unknown = client.post("/v1/enroll", json=enrol_body(UNKNOWN_MAC, WRONG))
    wrong = client.post("/v1/enroll", json=enrol_body(MAC, WRONG))
    no_code = client.post("/v1/enroll", json=enrol_body(NO_CODE_MAC, CODE))

    for response in (wrong, no_code):
        assert response.status_code == unknown.status_code == 403
        assert response.headers.multi_items() == unknown.headers.multi_items()
        assert response.content == unknown.content
    body = assert_problem(unknown, 403, "enrolment_refused")
    assert body["detail"] == REFUSED
    assert "retry-after" not in unknown.headers
    assert world.count("certgen_enrolment_failures_total", reason="unknown_mac") == 1
    assert world.count("certgen_enrolment_failures_total", reason="wrong_claim_code") == 1
    assert world.count("certgen_enrolment_failures_total", reason="no_claim_code") == 1


def test_the_log_keeps_the_real_reason_and_the_source_never_the_code(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        client.post("/v1/enroll", json=enrol_body(UNKNOWN_MAC, WRONG), source=ATTACKER)
        client.post("/v1/enroll", json=enrol_body(MAC, WRONG), source=ATTACKER)
    refusals = [r.__dict__ for r in caplog.records if r.getMessage() == "request refused"]
    assert [(r["reason"], r["answered"], r["mac"], r["source"]) for r in refusals] == [
        ("unknown_mac", "enrolment_refused", UNKNOWN_MAC, ATTACKER),
        ("wrong_claim_code", "enrolment_refused", MAC, ATTACKER),
    ]
    assert WRONG not in caplog.text
    assert WRONG.replace("-", "") not in caplog.text


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    world: World, tmp_path: Path
) -> None:
    proxy = "10.0.0.2"
    trusting = app_client(world, tmp_path, own=CertgenSettings(certgen_trusted_proxies=proxy))
    for n in range(3):  # the attacker, through the proxy
        trusting.post("/v1/enroll", json=enrol_body(code=WRONG), source=proxy,
                      headers={"X-Forwarded-For": f"192.0.2.{n}, {ATTACKER}"})  # fmt: skip
    assert trusting.throttle.check(ATTACKER) is not None
    assert trusting.throttle.check(proxy) is None
    # The device behind the same proxy is not the attacker.
    device = trusting.post("/v1/enroll", json=enrol_body(), source=proxy,
                           headers={"X-Forwarded-For": DEVICE})  # fmt: skip
    assert device.status_code == 200, device.text

    # Not trusted (the default): the header is the client's word, and counts for nothing.
    plain = app_client(world, tmp_path)
    for _ in range(3):
        plain.post("/v1/enroll", json=enrol_body(code=WRONG), source=DEVICE,
                   headers={"X-Forwarded-For": "192.0.2.200"})  # fmt: skip
    assert plain.throttle.check(DEVICE) is not None
    assert plain.throttle.check("192.0.2.200") is None


def test_spraying_macs_from_many_addresses_keeps_the_tables_at_their_cap(
    world: World, client: Client
) -> None:
    for n in range(POLICY.max_entries + 50):
        mac = f"0000{n:08x}"
        response = client.post(
            "/v1/enroll", json=enrol_body(mac, WRONG), source=f"10.1.{n // 256}.{n % 256}"
        )
        assert response.status_code == 403
    assert len(client.throttle.macs) == POLICY.max_entries
    assert len(client.throttle.sources) == POLICY.max_entries


def test_the_admin_api_is_off_without_a_token(client: Client) -> None:
    response = client.get("/v1/certificates", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 403
    assert response.json()["reason"] == "admin_disabled"


# --- what the app refuses before enrolment ------------------------------------------------------


def assert_problem(response: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["reason"] == reason
    assert body["type"] == f"urn:f2pipe:certgen:problem:{reason}"
    return body


def test_a_body_over_the_limit_is_refused_by_its_content_length(client: Client) -> None:
    big = b'{"mac": "' + b"a" * (MAX_BODY_BYTES + 1) + b'"}'
    response = client.post("/v1/enroll", content=big, headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "body_too_large")


def test_a_chunked_body_over_the_limit_is_refused_without_reading_the_rest(
    client: Client,
) -> None:
    chunk = b"a" * 4096
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(10 * MAX_BODY_BYTES // len(chunk)):
            sent += len(chunk)
            yield chunk

    # An async iterator is sent chunked, without Content-Length.
    response = client.post(
        "/v1/enroll", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413, "body_too_large")
    assert "content-length" not in response.request.headers
    assert sent <= MAX_BODY_BYTES + 2 * len(chunk)


def test_a_body_under_the_limit_is_still_read(client: Client) -> None:
    response = client.post("/v1/enroll", json={"mac": MAC, "claim_code": CODE})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("mac", ["aabbccddee01\n", "aabbccddee01'; DROP TABLE controllers; --"])
def test_a_validation_problem_names_the_field_and_rule_never_the_value(
    client: Client, mac: str
) -> None:
    response = client.post(
        "/v1/enroll",
        json={"mac": mac, "claim_code": CODE, "'; DROP TABLE x; --": 1},
    )
    body = assert_problem(response, 422, "invalid_mac")
    assert "\\n" not in response.text
    assert "DROP TABLE" not in response.text
    assert ["body", "mac"] in [e["loc"] for e in body["errors"]]
    assert "12 hex digits" in " ".join(e["msg"] for e in body["errors"])


def test_a_body_that_is_not_utf8_is_invalid_json(client: Client) -> None:
    response = client.post(
        "/v1/enroll",
        content=b'{"mac": "\xff\xfe", "claim_code": "x"}',
        headers={"Content-Type": "application/json"},
    )
    assert_problem(response, 422, "invalid_json")


def test_the_schema_carries_the_mac_pattern_certgen_enforces(client: Client) -> None:
    schema = client.get("/openapi.json").json()
    mac = schema["components"]["schemas"]["EnrollRequest"]["properties"]["mac"]
    pattern = re.compile(mac["pattern"])
    for accepted in ("aabbccddee01", "AA:BB:CC:DD:EE:01", "aa-bb-cc-dd-ee-01"):
        assert pattern.fullmatch(accepted)
        assert normalize_mac(accepted) == MAC
    for refused in ("aa:bb-cc:dd:ee:01", "aabbccddee0", "aabbccddee0g", "aa:bb:cc:dd:ee:01:"):
        assert not pattern.fullmatch(refused)


def test_the_docs_ui_is_off_but_the_schema_is_served(client: Client) -> None:
    assert_problem(client.get("/docs"), 404, "not_found")
    assert_problem(client.get("/redoc"), 404, "not_found")
    assert client.get("/openapi.json").status_code == 200


def test_the_access_log_leaves_query_strings_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Server:
        """Stands in for uvicorn.Server: logs one access line the way uvicorn does."""

        def __init__(self, config: object) -> None:
            del config

        def run(self) -> None:
            logging.getLogger("uvicorn.access").info(
                '%s - "%s %s HTTP/%s" %d',
                "10.0.0.1:5000",
                "GET",
                "/v1/crl.pem?claim_code=7KQM-X4RT",
                "1.1",
                200,
            )

    monkeypatch.setattr(uvicorn, "Server", Server)
    certgen = service.CertgenService(
        registry=cast(PostgresStore, None),
        open_ca=lambda: (cast(CertificateAuthority, None), []),
        ca_dir="unused",
        make_app=lambda ca: FastAPI(),
        host="127.0.0.1",
        port=0,
    )
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        certgen.serve(cast(CertificateAuthority, None))
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert lines == ['10.0.0.1:5000 - "GET /v1/crl.pem HTTP/1.1" 200']


def test_an_admin_call_with_a_bad_mac_does_not_echo_it(world: World, tmp_path: Path) -> None:
    token = "admin-token-0123456789abcdef"
    response = app_client(world, tmp_path, certgen_admin_token=SecretStr(token)).post(
        "/v1/devices/aabbccddee01'; DROP TABLE devices; --/revoke",
        json={"reason": "key_compromise"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert_problem(response, 422, "invalid_mac")
    assert "DROP TABLE" not in response.text
