import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f2pipe_devtools.testkit.payloads import payload_examples
from f2pipe_shared.payloads import (
    REPORT_STATE,
    DoorSensors,
    ExitButtons,
    InvalidJson,
    Payload,
    PayloadError,
    PowerFlag,
    ReaderFeedback,
    ReaderScan,
    ReaderSignal,
    SchemaViolation,
    SensorFrame,
    SirenCommand,
    StateRequest,
    Status,
    StrikeCommand,
    encode_payload,
    parse_payload,
    sensor_frame_fields,
)
from f2pipe_shared.timestamps import EpochParser, to_epoch_us
from f2pipe_shared.topics import ComponentKind, Topic, make_topic, parse_topic

MAC = "e4fd45f654be"
TS = '"timestamp":"2024-05-01 12:00:00.123456"'
WHEN = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt_topics.md"

STRIKE_STAT = make_topic("stat", MAC, "J1", "strike-1")
STRIKE_CMND = make_topic("cmnd", MAC, "J1", "strike-1")
SIREN_CMND = make_topic("cmnd", MAC, "J2", "siren-1")
DOORS = make_topic("stat", MAC, "J1", "door-sensors")
BUTTONS = make_topic("stat", MAC, "J1", "exit-buttons")
READER = make_topic("tele", MAC, "J1", "reader-1")
READER_SUCCESS = make_topic("cmnd", MAC, "J1", "reader-1", "success")
SENSOR = make_topic("tele", MAC, "J3", "sensor-2")

utc_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


def _parse(topic: Topic, text: str) -> Payload:
    return parse_payload(topic, text.encode())


@pytest.mark.parametrize(
    ("topic", "expected_type"),
    [
        (make_topic("stat", MAC, "J1", "strike-2"), Status),
        (make_topic("stat", MAC, "J1", "siren-2"), Status),
        (make_topic("stat", MAC, "J4", "motion-sensor-5"), Status),
    ],
)
def test_strike_siren_and_motion_states_are_status(topic: Topic, expected_type: type) -> None:
    parsed = _parse(topic, f'{{{TS},"status":true}}')

    assert parsed == Status(timestamp=WHEN, status=True)
    assert isinstance(parsed, expected_type)


def test_sensor_frame_keeps_hex_and_gives_frame_bytes() -> None:
    parsed = _parse(SENSOR, f'{{{TS},"data":"01 03 02 00 2A 38 5B"}}')

    assert isinstance(parsed, SensorFrame)
    assert parsed.timestamp == WHEN
    assert parsed.frame() == bytes([0x01, 0x03, 0x02, 0x00, 0x2A, 0x38, 0x5B])


def test_door_sensors_use_wire_names() -> None:
    parsed = _parse(DOORS, f'{{{TS},"door-sensor-1":true,"door-sensor-2":false}}')

    assert parsed == DoorSensors(timestamp=WHEN, door_sensor_1=True, door_sensor_2=False)


def test_exit_buttons_use_wire_names() -> None:
    parsed = _parse(BUTTONS, f'{{{TS},"exit-button-1":false,"exit-button-2":true}}')

    assert parsed == ExitButtons(timestamp=WHEN, exit_button_1=False, exit_button_2=True)


def test_reader_scan_keeps_data() -> None:
    assert _parse(READER, f'{{{TS},"data":"QR:ticket-42"}}') == ReaderScan(
        timestamp=WHEN, data="QR:ticket-42"
    )


def test_reader_data_may_have_1023_chars_but_not_1024() -> None:
    assert isinstance(_parse(READER, f'{{{TS},"data":"{"x" * 1023}"}}'), ReaderScan)

    with pytest.raises(SchemaViolation, match="1023") as info:
        _parse(READER, f'{{{TS},"data":"{"x" * 1024}"}}')
    assert info.value.field == "data"


def test_timestamp_without_fraction_is_written_back_with_six_digits() -> None:
    parsed = _parse(STRIKE_STAT, '{"timestamp":"2024-05-01 12:00:00","status":false}')

    assert parsed == Status(timestamp=datetime(2024, 5, 1, 12, tzinfo=UTC), status=False)
    assert b'"2024-05-01 12:00:00.000000"' in encode_payload(parsed)


def test_device_messages_ignore_unknown_fields() -> None:
    parsed = _parse(STRIKE_STAT, f'{{{TS},"status":true,"rssi":-60}}')

    assert parsed == Status(timestamp=WHEN, status=True)


def test_strike_command_with_toggle_period() -> None:
    parsed = _parse(STRIKE_CMND, '{"power-flag":2,"period":120}')

    assert parsed == StrikeCommand(power_flag=PowerFlag.TOGGLE, period=120)
    assert encode_payload(parsed) == b'{"power-flag":2,"period":120}'


def test_strike_command_without_period_leaves_it_out_of_the_json() -> None:
    command = StrikeCommand(power_flag=PowerFlag.POWERED)

    assert encode_payload(command) == b'{"power-flag":1}'
    assert _parse(STRIKE_CMND, '{"power-flag":0}') == StrikeCommand(power_flag=PowerFlag.UNPOWERED)


@pytest.mark.parametrize("period", [0, 255])
def test_strike_period_bounds_are_accepted(period: int) -> None:
    parsed = _parse(STRIKE_CMND, f'{{"power-flag":2,"period":{period}}}')

    assert isinstance(parsed, StrikeCommand)
    assert parsed.period == period


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"power-flag":3}', "power-flag"),
        ('{"power-flag":-1}', "power-flag"),
        ('{"power-flag":true}', "power-flag"),
        ('{"power-flag":1.0}', "power-flag"),
        ('{"power-flag":"1"}', "power-flag"),
        ('{"power-flag":1,"period":256}', "period"),
        ('{"power-flag":1,"period":-1}', "period"),
        ('{"power-flag":1,"period":true}', "period"),
        ('{"period":10}', "power-flag"),
        ('{"power-flag":1,"perod":10}', "perod"),  # commands forbid unknown fields
        ('{"power-flag":2}', None),  # a toggle needs its period
    ],
)
def test_strike_command_violations_name_the_field(text: str, field: str | None) -> None:
    with pytest.raises(SchemaViolation) as info:
        _parse(STRIKE_CMND, text)

    assert info.value.field == field
    assert (repr(field) if field else "payload") in str(info.value)


@pytest.mark.parametrize(("text", "on"), [("1", True), ("0", False)])
def test_siren_command_is_a_bare_number(text: str, on: bool) -> None:
    parsed = _parse(SIREN_CMND, text)

    assert isinstance(parsed, SirenCommand)
    assert parsed.on is on
    assert encode_payload(parsed) == text.encode()


@pytest.mark.parametrize("text", ["2", "-1", "true", "1.0", '"1"', '{"on":1}'])
def test_siren_command_rejects_anything_but_0_or_1(text: str) -> None:
    with pytest.raises(SchemaViolation) as info:
        _parse(SIREN_CMND, text)

    assert info.value.field is None


@pytest.mark.parametrize(
    ("text", "feedback"),
    [("1", ReaderFeedback.SUCCESS), ("2", ReaderFeedback.FAIL_1), ("3", ReaderFeedback.FAIL_2)],
)
def test_reader_signal_values(text: str, feedback: ReaderFeedback) -> None:
    assert _parse(READER_SUCCESS, text) == ReaderSignal(feedback)


@pytest.mark.parametrize("text", ["0", "4", "true", "2.0"])
def test_reader_signal_rejects_other_values(text: str) -> None:
    with pytest.raises(SchemaViolation):
        _parse(READER_SUCCESS, text)


@pytest.mark.parametrize("topic", [STRIKE_CMND, SIREN_CMND])
def test_empty_command_is_an_explicit_state_request(topic: Topic) -> None:
    parsed = parse_payload(topic, b"")

    assert parsed is REPORT_STATE
    assert isinstance(parsed, StateRequest)
    assert encode_payload(parsed) == b""


@pytest.mark.parametrize("topic", [READER_SUCCESS, STRIKE_STAT, SENSOR])
def test_empty_payload_elsewhere_is_invalid_json(topic: Topic) -> None:
    with pytest.raises(InvalidJson):
        parse_payload(topic, b"")


@pytest.mark.parametrize("payload", [b"{", b"not json", b"\xff\xfe", b'{"status":true,}'])
def test_invalid_json_reason(payload: bytes) -> None:
    with pytest.raises(InvalidJson, match="not valid JSON") as info:
        parse_payload(STRIKE_STAT, payload)

    assert info.value.reason == "invalid_json"
    assert isinstance(info.value, PayloadError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", ['"yes"', '"true"', "1", "0", "null"])
def test_booleans_are_strict(value: str) -> None:
    text = f'{{{TS},"door-sensor-1":{value},"door-sensor-2":false}}'

    with pytest.raises(SchemaViolation, match="'door-sensor-1'") as info:
        _parse(DOORS, text)

    assert info.value.field == "door-sensor-1"
    assert info.value.reason == "schema_violation"


def test_missing_field_is_named() -> None:
    with pytest.raises(SchemaViolation, match="'exit-button-2': Field required") as info:
        _parse(BUTTONS, f'{{{TS},"exit-button-1":true}}')

    assert info.value.field == "exit-button-2"


@pytest.mark.parametrize(
    "stamp",
    ["2024-05-01T12:00:00", "2024-05-01 12:00:00Z", "2024-05-01 12:00:00+00:00", "1714564800"],
)
def test_bad_timestamp_names_the_field_and_the_format(stamp: str) -> None:
    with pytest.raises(SchemaViolation, match="YYYY-MM-DD HH:MM:SS") as info:
        _parse(STRIKE_STAT, f'{{"timestamp":"{stamp}","status":true}}')

    assert info.value.field == "timestamp"


def test_numeric_timestamp_is_rejected() -> None:
    with pytest.raises(SchemaViolation) as info:
        _parse(STRIKE_STAT, '{"timestamp":1714564800,"status":true}')

    assert info.value.field == "timestamp"


def test_non_object_payload_is_a_schema_violation_of_the_whole() -> None:
    with pytest.raises(SchemaViolation, match="payload: ") as info:
        _parse(DOORS, "[true, false]")

    assert info.value.field is None


def test_python_datetimes_are_stored_as_utc() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=-5)))

    assert Status(timestamp=local, status=True).timestamp.utcoffset() == timedelta(0)
    assert Status(timestamp=local, status=True) == Status(timestamp=WHEN, status=True)


def test_naive_python_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Status(timestamp=datetime(2024, 5, 1), status=True)


@given(utc_times, st.booleans(), st.booleans())
def test_door_sensors_round_trip(when: datetime, one: bool, two: bool) -> None:
    model = DoorSensors(timestamp=when, door_sensor_1=one, door_sensor_2=two)

    assert parse_payload(DOORS, encode_payload(model)) == model


@given(utc_times, st.text(max_size=1023))
def test_reader_scan_round_trips_any_text(when: datetime, data: str) -> None:
    model = ReaderScan(timestamp=when, data=data)

    assert parse_payload(READER, encode_payload(model)) == model


@given(st.sampled_from(PowerFlag), st.none() | st.integers(0, 255))
def test_strike_command_round_trips(flag: PowerFlag, period: int | None) -> None:
    if flag is PowerFlag.TOGGLE and period is None:
        period = 120
    model = StrikeCommand(power_flag=flag, period=period)

    assert parse_payload(STRIKE_CMND, encode_payload(model)) == model


EXAMPLES = payload_examples(MAC)


@pytest.mark.parametrize(("topic", "payload"), EXAMPLES, ids=[str(t) for t, _ in EXAMPLES])
def test_examples_parse_and_encode_back_to_the_same_bytes(topic: Topic, payload: bytes) -> None:
    assert encode_payload(parse_payload(topic, payload)) == payload


def test_examples_cover_every_component_and_topic_type() -> None:
    covered = {(t.kind, t.component_kind, t.sub) for t, _ in EXAMPLES}

    assert covered == {  # the rows of the protocol table
        ("cmnd", ComponentKind.STRIKE, None),
        ("stat", ComponentKind.STRIKE, None),
        ("stat", ComponentKind.DOOR_SENSORS, None),
        ("tele", ComponentKind.READER, None),
        ("cmnd", ComponentKind.READER, "success"),
        ("stat", ComponentKind.EXIT_BUTTONS, None),
        ("cmnd", ComponentKind.SIREN, None),
        ("stat", ComponentKind.SIREN, None),
        ("stat", ComponentKind.MOTION_SENSOR, None),
        ("tele", ComponentKind.SENSOR, None),
    }
    assert any(p == b"" for _, p in EXAMPLES)  # the "report your state" command


def _doc_example_block() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- examples -->\n```text\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/mqtt_topics.md lost its examples block"
    return block.group(1).splitlines()


def test_doc_examples_block_is_payload_examples() -> None:
    expected = [f"{t}  {p.decode()}".rstrip() for t, p in EXAMPLES]

    assert _doc_example_block() == expected


def test_doc_component_table_examples_parse() -> None:
    # Rows look like: | `topic pattern` | direction | type | payload | `example` |
    rows = re.findall(r"^\| `([^`]*f2-<mac>[^`]*)` .*\| `([^`]*)` \|$", DOC.read_text(), re.M)
    assert len(rows) == 10  # one per row of the protocol table
    for pattern, example in rows:
        topic = pattern.replace("<mac>", MAC).replace("<k>", "1").replace("<n>", "1")
        parse_payload(parse_topic(topic), example.encode())


# --- the processor's fast path for sensor frames: never another answer than the model's -----

FRAME = "01 03 06 09 29 11 D7 02 64 4B 1E"
_json_values = st.one_of(
    st.sampled_from([
        '"2024-05-01 12:00:00.123456"', f'"{FRAME}"', '"zz"', "1", "1e400", "NaN", "-Infinity",
        "null", "true", "[]", "{}", '"\\ud800"', '"\\u0041"', '"a\\"b"', '"\u00e9"', '"\x01"',
        "[" * 150 + "]" * 150, "[" * 199 + "]" * 199, "[" * 201 + "]" * 201,
    ]),
    st.text(max_size=12).map(lambda t: '"' + t.replace("\\", "").replace('"', "") + '"'),
    st.integers().map(str),
)  # fmt: skip
_stamps = st.one_of(
    st.sampled_from([
        '"2024-05-01 12:00:00.123456"', '"2024-05-01 12:00:00"', '"2024-02-30 12:00:00"',
        '"2024-05-01T12:00:00"', '"2024-05-01 12:00:00\\u0030"',
    ]),
    st.text(alphabet="0123456789-: .", max_size=26).map(lambda t: f'"{t}"'),
)  # fmt: skip
_extra = st.lists(
    st.tuples(st.sampled_from(["timestamp", "data", "x", "Data", "timestamp "]), _json_values),
    max_size=3,
)
_datas = st.one_of(st.just(f'"{FRAME}"'), st.text(max_size=8).map(json.dumps), _json_values)
_members = st.builds(  # mostly a frame's two fields, among others, in any order
    lambda stamp, data, extra: [("timestamp", stamp), ("data", data), *extra],
    _stamps, _datas, _extra,
).flatmap(st.permutations)  # fmt: skip
_documents = st.builds(
    lambda members, lead, trail: (
        lead + "{" + ",".join(f'"{k}":{v}' for k, v in members) + "}" + trail
    ),
    _members,
    st.sampled_from(["", "", "", " ", "\n", "\ufeff", "[", "x"]),
    st.sampled_from(["", "", "", " ", "\n", ",", "}", "\x00"]),
)
_encodings = st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1"])


def _fast_and_model(payload: bytes) -> tuple[tuple[str, str] | None, object]:
    fast = sensor_frame_fields(payload)
    try:
        model: object = parse_payload(SENSOR, payload)
    except PayloadError as exc:
        model = exc
    return fast, model


@settings(max_examples=600)  # about one in seven takes the fast path
@given(_documents, _encodings)
def test_the_sensor_fast_path_only_answers_what_the_model_accepts_with_the_same_values(
    document: str, encoding: str
) -> None:
    try:
        payload = document.encode(encoding)
    except UnicodeEncodeError:
        payload = document.encode("utf-8", "surrogatepass")
    fast, model = _fast_and_model(payload)
    if fast is None:
        return  # the model decides: nothing to compare
    assert isinstance(model, SensorFrame) or _timestamp_refused(model), (payload, model)
    if isinstance(model, SensorFrame):
        assert fast[1] == model.data
        assert EpochParser().epoch_us(fast[0]) == to_epoch_us(model.timestamp)
    else:  # only its timestamp is wrong: EpochParser refuses it too, so the model is asked
        with pytest.raises(ValueError):
            EpochParser().epoch_us(fast[0])


def _timestamp_refused(error: object) -> bool:
    return isinstance(error, SchemaViolation) and error.field == "timestamp"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"timestamp":"2024-05-01 12:00:00.123456","data":"01","x":"\\ud800"}',
        '{"timestamp":"2024-05-01 12:00:00.123456","data":"01"}'.encode("utf-16"),
        b'\xef\xbb\xbf{"timestamp":"2024-05-01 12:00:00.123456","data":"01"}',
        b'{"timestamp":"2024-05-01 12:00:00.123456","data":"01","x":'
        + b"[" * 201
        + b"]" * 201
        + b"}",
        b'{"timestamp":"2024-05-01 12:00:00.123456","data":"\xff"}',
    ],
    ids=["lone-surrogate", "utf-16", "bom", "too-deep", "not-utf-8"],
)
def test_what_json_loads_takes_and_the_model_refuses_never_takes_the_fast_path(
    payload: bytes,
) -> None:
    fast, model = _fast_and_model(payload)
    assert isinstance(model, PayloadError)
    assert fast is None


def test_a_frame_as_controllers_send_it_takes_the_fast_path() -> None:
    # Without it the processor is a third slower (bench processor: core / plain loop).
    payload = f'{{{TS},"data":"{FRAME}"}}'.encode()
    assert sensor_frame_fields(payload) == ("2024-05-01 12:00:00.123456", FRAME)
