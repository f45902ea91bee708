"""Fakes certgen's unit tests share: a clock the test moves, and the lockout state in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    at: datetime = T0

    def now(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


@dataclass
class FakeLockoutState:
    """`ports.LockoutState` in memory, as the SQL in store.py keeps it."""

    failures: dict[str, list[datetime]] = field(default_factory=dict)
    lockouts: dict[str, tuple[datetime, datetime, int]] = field(default_factory=dict)

    async def locked_until(self, mac: str) -> datetime | None:
        lockout = self.lockouts.get(mac)
        return None if lockout is None else lockout[1]

    async def add_failure(self, mac: str, *, at: datetime, window_start: datetime) -> int:
        kept = [t for t in self.failures.get(mac, []) if t > window_start]
        self.failures[mac] = [*kept, at]
        return len(self.failures[mac])

    async def lock_out(self, mac: str, *, at: datetime, until: datetime, failures: int) -> None:
        self.failures.pop(mac, None)
        self.lockouts[mac] = (at, until, failures)

    async def clear_failures(self, mac: str, *, now: datetime) -> None:
        self.failures.pop(mac, None)
        if mac in self.lockouts and self.lockouts[mac][1] <= now:
            del self.lockouts[mac]
