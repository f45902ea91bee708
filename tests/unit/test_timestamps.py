from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from f2pipe_shared.timestamps import (
    EpochParser,
    format_device_timestamp,
    from_epoch_us,
    parse_device_timestamp,
    to_epoch_us,
)

EXPECTED_FORMAT = "YYYY-MM-DD HH:MM:SS.ffffff"

utc_datetimes = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
fixed_zones = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)


def test_parse_full_precision_gives_utc_aware_datetime() -> None:
    parsed = parse_device_timestamp("2024-05-01 12:34:56.123456")

    assert parsed == datetime(2024, 5, 1, 12, 34, 56, 123456, tzinfo=UTC)
    assert parsed.utcoffset() == timedelta(0)


def test_parse_accepts_missing_fraction() -> None:
    assert parse_device_timestamp("2024-05-01 12:34:56") == datetime(
        2024, 5, 1, 12, 34, 56, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T12:34:56.123456",  # ISO "T" separator
        "2024-05-01 12:34:56.123456Z",  # zone suffix
        "2024-05-01 12:34:56.123456+00:00",
        "2024-05-01 12:34:56+02:00",
        "2024-05-01 12:34:56.123",  # fraction must have six digits
        "2024-05-01 12:34:56.",
        "2024-05-01 12:34",
        "2024-05-01",
        "2024-5-1 12:34:56",
        " 2024-05-01 12:34:56",
        "2024-05-01 12:34:56 ",
        "2024-02-30 12:34:56",  # right shape, impossible date
        "2024-05-01 24:00:00",
        "\uff12\uff1024-05-01 12:34:56",  # non-ASCII digits
        "",
        "yesterday",
    ],
)
def test_parse_rejects_other_formats_naming_the_expected_one(text: str) -> None:
    with pytest.raises(ValueError, match=EXPECTED_FORMAT.replace(".", r"\.")) as info:
        parse_device_timestamp(text)

    assert repr(text) in str(info.value)


def test_parse_rejection_truncates_long_input_in_message() -> None:
    with pytest.raises(ValueError, match=r"\.\.\.$") as info:
        parse_device_timestamp("9" * 10_000)

    assert len(str(info.value)) < 200


def test_format_always_writes_six_fraction_digits() -> None:
    dt = datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)

    assert format_device_timestamp(dt) == "2024-05-01 12:34:56.000000"


def test_format_converts_other_zones_to_utc() -> None:
    dt = datetime(2024, 5, 1, 14, 34, 56, 5, tzinfo=timezone(timedelta(hours=2)))

    assert format_device_timestamp(dt) == "2024-05-01 12:34:56.000005"


def test_format_rejects_naive_datetime() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_device_timestamp(datetime(2024, 5, 1, 12, 34, 56))


@given(utc_datetimes)
def test_format_then_parse_round_trips(dt: datetime) -> None:
    assert parse_device_timestamp(format_device_timestamp(dt)) == dt


@given(utc_datetimes, fixed_zones)
def test_format_then_parse_keeps_the_instant_of_any_zone(dt: datetime, zone: timezone) -> None:
    local = dt.astimezone(zone)

    assert parse_device_timestamp(format_device_timestamp(local)) == local


def test_to_epoch_us_known_value() -> None:
    dt = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)

    assert to_epoch_us(dt) == 1_714_564_800_123_456


def test_to_epoch_us_before_epoch_is_negative() -> None:
    assert to_epoch_us(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1


def test_to_epoch_us_rejects_naive_datetime() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_epoch_us(datetime(2024, 5, 1))


def test_from_epoch_us_is_utc_aware() -> None:
    dt = from_epoch_us(1_714_564_800_123_456)

    assert dt == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert dt.tzinfo is UTC


@given(utc_datetimes)
def test_epoch_us_round_trips_exactly(dt: datetime) -> None:
    assert from_epoch_us(to_epoch_us(dt)) == dt


@given(st.integers(min_value=-(2**55), max_value=2**55))
def test_epoch_us_round_trips_from_integers(us: int) -> None:
    assert to_epoch_us(from_epoch_us(us)) == us


# --- EpochParser: the processor's per-batch parser, the same answers as the model's ------------

ODD_TIMESTAMPS = [
    "2024-02-30 00:00:00.000000",  # right shape, no such day
    "2024-05-01 24:00:00.000000",
    "2024-05-01T12:00:00.000000",
    "2024-05-01 12:00:00.123",
    "2024-05-01 12:00:00+00:00",
    "2024-05-01 12:00:00.1234567",
    "\uff12\uff10\uff12\uff14-05-01 12:00:00.000000",  # fullwidth digits (re.ASCII)
    "",
    "x" * 500,
]


def _both(text: str) -> tuple[object, object]:
    """What EpochParser and parse_device_timestamp + to_epoch_us say about `text`."""
    try:
        fast: object = EpochParser().epoch_us(text)
    except ValueError as exc:
        fast = ("ValueError", str(exc))
    try:
        model: object = to_epoch_us(parse_device_timestamp(text))
    except ValueError as exc:
        model = ("ValueError", str(exc))
    return fast, model


@given(utc_datetimes, st.booleans())
def test_epoch_parser_gives_the_exact_microseconds_of_any_valid_timestamp(
    dt: datetime, fraction: bool
) -> None:
    text = format_device_timestamp(dt)
    text = text if fraction else text[:19]
    fast, model = _both(text)
    assert fast == model


@pytest.mark.parametrize("text", ODD_TIMESTAMPS)
def test_epoch_parser_refuses_what_the_model_refuses_with_its_words(text: str) -> None:
    fast, model = _both(text)
    assert fast == model
    assert isinstance(fast, tuple)


@given(st.text(alphabet="0123456789-: .T+Z", max_size=30))
def test_epoch_parser_agrees_with_the_model_on_near_miss_strings(text: str) -> None:
    fast, model = _both(text)
    assert fast == model


def test_epoch_parser_remembers_seconds_and_still_adds_each_fraction() -> None:
    parser = EpochParser()
    base = parser.epoch_us("2026-12-06 10:00:00")
    assert parser.epoch_us("2026-12-06 10:00:00.000001") == base + 1
    assert parser.epoch_us("2026-12-06 10:00:00.999999") == base + 999_999
    for second in range(EpochParser.MAX_SECONDS + 5):  # past its bound: forgets, stays right
        text = format_device_timestamp(from_epoch_us(base + second * 1_000_000))
        assert parser.epoch_us(text) == base + second * 1_000_000
    assert len(parser._seconds) <= EpochParser.MAX_SECONDS
