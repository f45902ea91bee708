"""What the api talks to that a test replaces: the clock (token expiry, last use). The
registry is `store.PostgresStore`: the api's every answer is SQL, tested against PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


SYSTEM_CLOCK = SystemClock()
