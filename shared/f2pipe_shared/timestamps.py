"""Device timestamps: ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC, written without a zone.

Everything inside the pipeline uses timezone-aware UTC datetimes; the wire format only
exists at the edges (payload parsing and the simulator).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

DEVICE_TIMESTAMP_FORMAT = "YYYY-MM-DD HH:MM:SS.ffffff"

# fromisoformat alone is too lenient (it takes a "T", zones, 3-digit fractions, bare dates),
# so a cheap shape check pins the device format before the C parser does the real work.
_SHAPE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{6})?", re.ASCII).fullmatch
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def parse_device_timestamp(s: str) -> datetime:
    """Parse a device timestamp into a UTC-aware datetime (the fraction may be left out)."""
    if not isinstance(s, str) or _SHAPE(s) is None:
        raise ValueError(_bad_format(s))
    try:
        # Appending the zone is ~6x faster than .replace(tzinfo=UTC) on the result.
        return datetime.fromisoformat(s + "+00:00")
    except ValueError:  # right shape, impossible date or time (e.g. February 30)
        raise ValueError(_bad_format(s)) from None


class EpochParser:
    """Device timestamp strings -> microseconds since the epoch: the same value and the same
    ValueError as ``to_epoch_us(parse_device_timestamp(s))``, at a fraction of the cost when
    timestamps share their second, as a batch's do: the date and time are parsed once per
    distinct second, the microseconds added as digits (the shape check guarantees six)."""

    MAX_SECONDS = 4096  # distinct seconds remembered; then forgotten all at once

    def __init__(self) -> None:
        self._seconds: dict[str, int] = {}

    def epoch_us(self, s: str) -> int:
        if _SHAPE(s) is None:
            raise ValueError(_bad_format(s))
        second = s[:19]
        base = self._seconds.get(second)
        if base is None:
            try:
                base = to_epoch_us(parse_device_timestamp(second))
            except ValueError:  # right shape, impossible date or time: named as given
                raise ValueError(_bad_format(s)) from None
            if len(self._seconds) >= self.MAX_SECONDS:
                self._seconds.clear()
            self._seconds[second] = base
        return base + int(s[20:]) if len(s) > 19 else base


def format_device_timestamp(dt: datetime) -> str:
    """Write an aware datetime in the device format, converted to UTC, always with 6 digits."""
    utc = _require_aware(dt).astimezone(UTC)
    return utc.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def to_epoch_us(dt: datetime) -> int:
    """Microseconds since the Unix epoch, exact (no float round trip)."""
    return (_require_aware(dt) - _EPOCH) // _ONE_US


def from_epoch_us(us: int) -> datetime:
    """The UTC-aware datetime ``us`` microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=us)


def _require_aware(dt: datetime) -> datetime:
    # A naive datetime is ambiguous (local time or UTC?): refuse it rather than guess.
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: device timestamps need a timezone-aware value")
    return dt


def _bad_format(s: object) -> str:
    shown = repr(s)
    if len(shown) > 80:  # the value lands in logs and dead letters: keep it readable
        shown = f"{shown[:77]}..."
    return f"expected a UTC timestamp {DEVICE_TIMESTAMP_FORMAT!r} (no zone), got {shown}"
