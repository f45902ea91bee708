"""Claim-code lockout: too many wrong codes for a MAC refuse it for a while.

State is in the registry (`ports.LockoutState`; PostgreSQL, migration 0008), so it survives
restarts and every replica sees it; the times are the injected clock's. The caller holds the
MAC's lock (`lock_mac`) across check, verification and recording, so concurrent guesses for
one MAC are evaluated one at a time: at most `max_failures` wrong codes are ever checked per
lockout period, however many requests an attacker sends at once.

With ~79-bit claim codes guessing is hopeless anyway; the lockout keeps it that way and makes
an attack visible (the `locked_out` refusals in logs and metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from f2pipe_certgen.ports import Clock, LockoutState
from f2pipe_shared.settings import CaSettings


@dataclass(frozen=True)
class LockoutPolicy:
    max_failures: int = 5  # wrong codes within `window`…
    window: timedelta = timedelta(minutes=15)
    duration: timedelta = timedelta(minutes=15)  # …lock the MAC this long

    @classmethod
    def of(cls, settings: CaSettings) -> LockoutPolicy:
        """CERTGEN_LOCKOUT_FAILURES, CERTGEN_LOCKOUT_WINDOW and CERTGEN_LOCKOUT_DURATION."""
        return cls(
            max_failures=settings.certgen_lockout_failures,
            window=timedelta(seconds=settings.certgen_lockout_window),
            duration=timedelta(seconds=settings.certgen_lockout_duration),
        )


@dataclass(frozen=True)
class Lockout:
    until: datetime
    retry_after: int  # whole seconds until it ends, for the Retry-After header


@dataclass(frozen=True)
class Lockouts:
    """The policy applied to a MAC's state in the registry, at the clock's time."""

    policy: LockoutPolicy
    clock: Clock

    async def current(self, state: LockoutState, mac: str) -> Lockout | None:
        """The MAC's lockout, if one is in force."""
        until = await state.locked_until(mac)
        now = self.clock.now()
        return None if until is None or until <= now else _lockout(until, now)

    async def record_failure(self, state: LockoutState, mac: str) -> Lockout | None:
        """Count a wrong code; return the lockout when this one started it."""
        now = self.clock.now()
        failures = await state.add_failure(mac, at=now, window_start=now - self.policy.window)
        if failures < self.policy.max_failures:
            return None
        # The lockout consumes the failures that caused it: once it ends, the MAC starts afresh.
        until = now + self.policy.duration
        await state.lock_out(mac, at=now, until=until, failures=failures)
        return _lockout(until, now)

    async def clear(self, state: LockoutState, mac: str) -> None:
        """A right code outside a lockout: forget the MAC's earlier wrong codes."""
        await state.clear_failures(mac, now=self.clock.now())


def _lockout(until: datetime, now: datetime) -> Lockout:
    return Lockout(until, max(1, math.ceil((until - now).total_seconds())))
