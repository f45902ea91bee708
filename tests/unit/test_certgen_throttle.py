"""certgen's enrolment throttle in time (a fake clock, no sleeping), the client address it
keys on, and how main.build() wires it, TLS and the listen address from the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from f2pipe_certgen.ca import CertificateAuthority
from f2pipe_certgen.deps import Parts
from f2pipe_certgen.lockout import Buckets, Throttle, Throttled, ThrottlePolicy, client_source
from f2pipe_certgen.main import DEFAULT_HOST, PLAIN_HTTP_HOST, build, server_names
from f2pipe_certgen.settings import CertgenSettings, Settings
from f2pipe_shared.settings import CaSettings, CommonSettings, PostgresSettings, SettingsError
from f2pipe_shared.settings import load as load_settings
from tests.unit.certgen_fakes import FakeClock

MAC, OTHER_MAC = "aabbccddee01", "aabbccddee02"
ATTACKER, DEVICE = "203.0.113.66", "198.51.100.7"
POLICY = ThrottlePolicy(
    source_failures=3, source_refill=60, mac_failures=4, mac_refill=30, max_entries=10
)


def now(clock: FakeClock) -> float:
    return clock.now().timestamp()


# --- the buckets --------------------------------------------------------------------------------


def test_a_bucket_refills_one_token_per_refill_up_to_its_capacity() -> None:
    buckets = Buckets(capacity=3, refill=60, max_entries=10)
    assert buckets.tokens("a", 0) == 3  # nothing charged: full, and not even stored
    assert len(buckets) == 0
    for left in (2, 1, 0):
        assert buckets.charge("a", 0) == left
    assert buckets.wait("a", 0) == 60
    assert buckets.tokens("a", 90) == 1.5
    assert buckets.wait("a", 90) == 0
    assert buckets.tokens("a", 10_000) == 3


def test_charging_everything_leaves_no_token_and_keeps_a_debt() -> None:
    buckets = Buckets(capacity=3, refill=60, max_entries=10)
    assert buckets.charge("a", 0, everything=True) == 0
    assert buckets.wait("a", 0) == 60
    for _ in range(3):  # concurrent failures that were already past the check
        buckets.charge("a", 0)
    assert buckets.tokens("a", 0) == -3
    assert buckets.wait("a", 0) == 4 * 60  # the debt is waited off in full


def test_a_clock_stepping_back_gives_no_tokens() -> None:
    buckets = Buckets(capacity=3, refill=60, max_entries=10)
    buckets.charge("a", 1000)
    assert buckets.tokens("a", 0) == 2


def test_the_table_never_holds_more_than_its_cap() -> None:
    buckets = Buckets(capacity=3, refill=60, max_entries=10)
    for n in range(1000):
        buckets.charge(f"key-{n}", 0)
    assert len(buckets) == 10
    assert "key-999" in buckets
    assert "key-989" not in buckets  # the least recently charged went first


def test_full_buckets_are_forgotten_as_soon_as_anything_is_charged() -> None:
    buckets = Buckets(capacity=3, refill=60, max_entries=10)
    buckets.charge("old", 0)
    buckets.charge("older-but-busy", 0)
    buckets.charge("older-but-busy", 0)
    buckets.charge("older-but-busy", 0)
    buckets.charge("new", 59)
    assert len(buckets) == 3  # "old" is not full yet at 59 s
    buckets.charge("new", 61)
    assert "old" not in buckets  # full again at 60 s: it says nothing any more
    assert "older-but-busy" in buckets


# --- the throttle -------------------------------------------------------------------------------


def test_a_source_that_keeps_failing_is_told_when_to_come_back() -> None:
    clock = FakeClock()
    throttle = Throttle(POLICY, clock)
    for n in range(3):
        assert throttle.check(ATTACKER) is None
        throttle.failed(ATTACKER, f"0000000000{n:02x}")
    assert throttle.check(ATTACKER) == Throttled(retry_after=60)
    clock.advance(seconds=59.5)
    assert throttle.check(ATTACKER) == Throttled(retry_after=1)  # rounded up, never 0
    clock.advance(seconds=0.5)
    assert throttle.check(ATTACKER) is None
    assert throttle.check(DEVICE) is None


def test_failures_on_a_mac_never_throttle_another_source() -> None:
    clock = FakeClock()
    throttle = Throttle(POLICY, clock)
    for n in range(200):
        throttle.failed(f"10.0.{n // 256}.{n % 256}", MAC)
    assert throttle.macs.tokens(MAC, now(clock)) < 0  # hard under attack
    assert throttle.check(DEVICE) is None  # the device's own address owes nothing


def test_on_a_mac_under_attack_one_failure_takes_every_token_of_its_source() -> None:
    clock = FakeClock()
    throttle = Throttle(POLICY, clock)
    assert [throttle.failed(f"10.0.0.{n}", MAC) for n in range(4)] == [False] * 4
    assert throttle.failed(ATTACKER, MAC) is True
    assert throttle.check(ATTACKER) == Throttled(60)
    # The MAC's budget comes back with time: then a failure costs one token again.
    clock.advance(seconds=2 * 30)
    assert throttle.failed(DEVICE, MAC) is False
    assert throttle.sources.tokens(DEVICE, now(clock)) == 2
    # Another MAC is not under attack.
    assert throttle.failed("10.9.9.9", OTHER_MAC) is False


def test_the_policy_comes_from_the_settings() -> None:
    settings = CertgenSettings(
        certgen_source_failures=5,
        certgen_source_refill=30,
        certgen_mac_failures=7,
        certgen_mac_refill=10,
        certgen_throttle_entries=1000,
        certgen_ipv6_prefix=56,
    )
    assert ThrottlePolicy.of(settings) == ThrottlePolicy(5, 30.0, 7, 10.0, 1000, 56)
    assert ThrottlePolicy.of(CertgenSettings()) == ThrottlePolicy()  # the documented defaults


# --- the client's address -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # a dual-stack socket's IPv4 client
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),  # one subscriber's whole /64
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("testclient", "testclient"),
        (None, "unknown"),
        ("x" * 500, "x" * 64),
    ],
)
def test_the_source_is_the_peer_per_ipv6_network(peer: str | None, expected: str) -> None:
    assert client_source(peer, ["198.51.100.1"]) == expected


def test_an_ipv6_prefix_is_a_setting() -> None:
    assert client_source("2001:db8:1:2::1", [], ipv6_prefix=48) == "2001:db8:1::/48"
    assert client_source("2001:db8:1:2::1", [], ipv6_prefix=128) == "2001:db8:1:2::1/128"


def test_x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() -> None:
    proxies = CertgenSettings(certgen_trusted_proxies="10.0.0.0/8, fd00::1").trusted_proxy_networks
    forwarded = ["198.51.100.9, 203.0.113.5", "10.0.0.3"]  # two headers, as proxies append

    def source(peer: str, hops: list[str]) -> str:
        return client_source(peer, hops, trusted_proxies=proxies)

    # From the right: 10.0.0.3 is a proxy too; 203.0.113.5 is the client. The client's own
    # claim (198.51.100.9, left of it) is not believed.
    assert source("10.0.0.2", forwarded) == "203.0.113.5"
    assert source("fd00::1", ["203.0.113.5"]) == "203.0.113.5"
    assert source("192.0.2.1", forwarded) == "192.0.2.1"  # not a proxy: the header is ignored
    assert source("10.0.0.2", []) == "10.0.0.2"  # a proxy that did not say
    assert source("10.0.0.2", ["garbage, 203.0.113.5"]) == "203.0.113.5"
    assert source("10.0.0.2", ["203.0.113.5, garbage"]) == "10.0.0.2"  # stops at the unreadable
    assert source("10.0.0.2", ["10.0.0.4, 10.0.0.3"]) == "10.0.0.4"  # all proxies: the first
    # Without trusted proxies (the default) nobody's header counts.
    assert client_source("10.0.0.2", forwarded) == "10.0.0.2"


def test_trusted_proxies_that_do_not_parse_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CERTGEN_TRUSTED_PROXIES", "10.0.0.0/33")
    with pytest.raises(SettingsError, match="CERTGEN_TRUSTED_PROXIES"):
        load_settings(CertgenSettings)


# --- build: the parts, TLS and where it listens ---------------------------------------------


def settings_for(tmp_path: Path, ca: dict[str, object] | None = None, **own: object) -> Settings:
    ca_settings = CaSettings(ca_dir=str(tmp_path / "ca"), issued_dir=str(tmp_path / "issued"),
                             **ca or {})  # type: ignore[arg-type]  # fmt: skip
    return Settings(common=CommonSettings(), ca=ca_settings, postgres=PostgresSettings(),
                    certgen=CertgenSettings(**own))  # type: ignore[arg-type]  # fmt: skip


def test_build_gives_the_app_the_settings_policy_and_the_clock(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {"certgen_api_port": 8443}, certgen_source_failures=2)
    clock = FakeClock()
    service = build(settings, clock=clock)
    assert (service.host, service.port) == (DEFAULT_HOST, 8443)
    ca, _ = CertificateAuthority.bootstrap(settings.ca, clock=clock)

    parts: Parts = service.make_app(ca).state.certgen
    again: Parts = build(settings, host="127.0.0.1", port=1).make_app(ca).state.certgen

    assert parts.throttle.policy == ThrottlePolicy.of(settings.certgen)
    assert parts.throttle.clock is clock
    assert parts.settings is settings
    assert parts.ca is ca
    assert again.metrics is not parts.metrics  # each build counts for itself
    assert again.throttle is not parts.throttle
    assert again.throttle.clock is not clock


def test_with_tls_it_serves_https_on_every_interface_with_its_own_certificate(
    tmp_path: Path,
) -> None:
    service = build(settings_for(tmp_path))
    assert service.host == DEFAULT_HOST
    assert service.scheme == "https"
    assert service.tls is not None
    assert service.tls.certfile == tmp_path / "issued" / "certgen.crt"
    assert service.tls.keyfile == tmp_path / "issued" / "certgen.key"
    assert build(settings_for(tmp_path), host="10.1.2.3").host == "10.1.2.3"


def test_without_tls_the_default_host_is_loopback(tmp_path: Path) -> None:
    plain = build(settings_for(tmp_path, certgen_tls=False))
    assert (plain.host, plain.tls, plain.scheme) == (PLAIN_HTTP_HOST, None, "http")
    assert PLAIN_HTTP_HOST == "127.0.0.1"
    # Behind a TLS proxy on another host, the operator says so explicitly.
    assert build(settings_for(tmp_path, certgen_tls=False), host="0.0.0.0").host == "0.0.0.0"


def test_tls_off_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTGEN_TLS", "false")
    assert Settings.load().certgen.certgen_tls is False
    monkeypatch.delenv("CERTGEN_TLS")
    assert Settings.load().certgen.certgen_tls is True


def test_the_server_names_are_the_cn_the_api_host_and_the_extra_names(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path,
        {"certgen_api_host": "certgen.internal"},
        certgen_tls_sans="ca.example.org,10.1.2.3,certgen",
    )
    assert server_names(settings) == ["certgen", "certgen.internal", "ca.example.org", "10.1.2.3"]
    assert server_names(settings_for(tmp_path)) == ["certgen", "localhost"]


def test_the_bootstrap_issues_certgens_certificate_once(tmp_path: Path) -> None:
    # Only the CA's part, without a database (test_certgen_tls.py runs the real thing).
    service = build(settings_for(tmp_path))
    _, issued = service.open_ca()
    assert {(c.kind, c.cn) for c in issued} >= {("broker", "certgen"), ("broker", "mqtt_broker")}
    assert (tmp_path / "issued" / "certgen.key").stat().st_mode & 0o777 == 0o600
    _, again = service.open_ca()
    assert again == []
    _, plain = build(settings_for(tmp_path / "plain", certgen_tls=False)).open_ca()
    assert "certgen" not in {c.cn for c in plain}
