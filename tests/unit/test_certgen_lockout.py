"""certgen's claim-code lockout in time: a fake clock and a fake registry, no PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from f2pipe_certgen.ca import CertificateAuthority
from f2pipe_certgen.deps import Parts
from f2pipe_certgen.lockout import Lockout, LockoutPolicy, Lockouts
from f2pipe_certgen.main import DEFAULT_HOST, build
from f2pipe_certgen.settings import Settings
from f2pipe_shared.settings import CaSettings, CommonSettings, PostgresSettings
from tests.unit.certgen_fakes import T0, FakeClock, FakeLockoutState

MAC = "aabbccddee01"
POLICY = LockoutPolicy(max_failures=3, window=timedelta(minutes=10), duration=timedelta(minutes=15))


@dataclass
class Guesses:
    clock: FakeClock = field(default_factory=FakeClock)
    state: FakeLockoutState = field(default_factory=FakeLockoutState)

    @property
    def lockouts(self) -> Lockouts:
        return Lockouts(POLICY, self.clock)

    def wrong(self) -> Lockout | None:
        return asyncio.run(self.lockouts.record_failure(self.state, MAC))

    def current(self) -> Lockout | None:
        return asyncio.run(self.lockouts.current(self.state, MAC))

    def right(self) -> None:
        asyncio.run(self.lockouts.clear(self.state, MAC))


def test_max_failures_within_the_window_lock_the_mac_for_the_duration() -> None:
    guesses = Guesses()
    assert guesses.wrong() is None
    guesses.clock.advance(minutes=4)
    assert guesses.wrong() is None
    assert guesses.current() is None
    guesses.clock.advance(minutes=4)

    locked = guesses.wrong()

    until = T0 + timedelta(minutes=8 + 15)
    assert locked == Lockout(until=until, retry_after=15 * 60)
    assert guesses.current() == locked
    assert guesses.state.lockouts[MAC] == (T0 + timedelta(minutes=8), until, 3)
    assert MAC not in guesses.state.failures  # the lockout consumed them


def test_retry_after_counts_down_in_whole_seconds_and_the_lockout_ends_on_time() -> None:
    guesses = Guesses()
    for _ in range(3):
        locked = guesses.wrong()
    assert locked is not None
    guesses.clock.advance(minutes=14, seconds=58.5)
    assert guesses.current() == Lockout(locked.until, retry_after=2)  # 1.5 s, rounded up
    guesses.clock.advance(seconds=1.4)
    assert guesses.current() == Lockout(locked.until, retry_after=1)  # never 0
    guesses.clock.advance(seconds=0.1)
    assert guesses.current() is None


def test_wrong_codes_older_than_the_window_do_not_count() -> None:
    guesses = Guesses()
    guesses.wrong()  # T0: forgotten once the window has passed it
    guesses.clock.advance(minutes=5)
    guesses.wrong()
    guesses.clock.advance(minutes=5)  # T0 + 10 min: T0 is exactly a window ago
    assert guesses.wrong() is None
    assert len(guesses.state.failures[MAC]) == 2
    guesses.clock.advance(seconds=1)
    assert guesses.wrong() is not None


def test_after_a_lockout_the_mac_starts_with_a_clean_count() -> None:
    guesses = Guesses()
    for _ in range(3):
        guesses.wrong()
    guesses.clock.advance(minutes=15)
    assert guesses.current() is None
    assert guesses.wrong() is None
    assert guesses.wrong() is None
    assert guesses.wrong() is not None


def test_a_right_code_clears_the_count_but_not_a_lockout_in_force() -> None:
    guesses = Guesses()
    guesses.wrong()
    guesses.wrong()
    guesses.right()
    assert MAC not in guesses.state.failures
    assert guesses.wrong() is None  # counting starts again

    for _ in range(2):
        locked = guesses.wrong()
    assert locked is not None
    guesses.right()
    assert guesses.current() == locked
    guesses.clock.advance(minutes=15)
    guesses.right()
    assert MAC not in guesses.state.lockouts


def test_a_new_lockout_replaces_an_ended_one() -> None:
    guesses = Guesses()
    for _ in range(3):
        guesses.wrong()
    guesses.clock.advance(hours=1)
    for _ in range(3):
        locked = guesses.wrong()
    assert locked == Lockout(T0 + timedelta(hours=1, minutes=15), 900)
    assert guesses.current() == locked


def test_the_policy_comes_from_the_settings() -> None:
    settings = CaSettings(
        certgen_lockout_failures=2, certgen_lockout_window=60, certgen_lockout_duration=30
    )
    assert LockoutPolicy.of(settings) == LockoutPolicy(
        max_failures=2, window=timedelta(minutes=1), duration=timedelta(seconds=30)
    )
    assert LockoutPolicy.of(CaSettings()) == LockoutPolicy()  # the documented 5 / 15 / 15


def test_build_gives_the_app_the_settings_policy_and_the_clock(tmp_path: Path) -> None:
    ca_settings = CaSettings(
        ca_dir=str(tmp_path / "ca"),
        issued_dir=str(tmp_path / "issued"),
        certgen_lockout_failures=2,
        certgen_api_port=8443,
    )
    settings = Settings(common=CommonSettings(), ca=ca_settings, postgres=PostgresSettings())
    clock = FakeClock()
    service = build(settings, clock=clock)
    assert (service.host, service.port) == (DEFAULT_HOST, 8443)
    ca, _ = CertificateAuthority.bootstrap(ca_settings, clock=clock)

    parts: Parts = service.make_app(ca).state.certgen
    again: Parts = build(settings, host="127.0.0.1", port=1).make_app(ca).state.certgen

    assert parts.lockouts == Lockouts(LockoutPolicy.of(ca_settings), clock)
    assert parts.settings is settings
    assert parts.ca is ca
    assert again.metrics is not parts.metrics  # each build counts for itself
    assert again.lockouts.clock is not clock
