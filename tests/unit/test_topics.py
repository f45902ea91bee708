import dataclasses
import itertools

import pytest

from f2pipe_shared.topics import (
    ComponentKind,
    Topic,
    TopicError,
    device_cn,
    device_level,
    iter_topics,
    mac_from_cn,
    make_topic,
    normalize_mac,
    parse_topic,
)

MAC = "e4fd45f654be"
DEV = f"f2-{MAC}"
CONNECTORS = ("J1", "J2", "J3", "J4")

# The protocol table, written out independently of the module under test:
# (topic type, mode, component stem, indexes or None, kind, sub-level)
PROTOCOL_TABLE = [
    ("stat", "access-control-mode", "strike", (1, 2), ComponentKind.STRIKE, None),
    ("cmnd", "access-control-mode", "strike", (1, 2), ComponentKind.STRIKE, None),
    ("stat", "access-control-mode", "door-sensors", None, ComponentKind.DOOR_SENSORS, None),
    ("stat", "access-control-mode", "exit-buttons", None, ComponentKind.EXIT_BUTTONS, None),
    ("tele", "access-control-mode", "reader", (1, 2), ComponentKind.READER, None),
    ("cmnd", "access-control-mode", "reader", (1, 2), ComponentKind.READER, "success"),
    ("stat", "alarm-mode", "siren", (1, 2), ComponentKind.SIREN, None),
    ("cmnd", "alarm-mode", "siren", (1, 2), ComponentKind.SIREN, None),
    ("stat", "alarm-mode", "motion-sensor", (1, 2, 3, 4, 5), ComponentKind.MOTION_SENSOR, None),
    ("tele", "sensor-mode", "sensor", (1, 2, 3, 4, 5, 6), ComponentKind.SENSOR, None),
]


def _valid_topics() -> list[tuple[str, Topic]]:
    cases = []
    for kind, mode, stem, indexes, component_kind, sub in PROTOCOL_TABLE:
        for connector, index in itertools.product(CONNECTORS, indexes or (None,)):
            component = stem if index is None else f"{stem}-{index}"
            text = f"{kind}/{DEV}/{mode}/{connector}/{component}" + (f"/{sub}" if sub else "")
            expected = Topic(kind, MAC, mode, connector, component, component_kind, index, sub)  # type: ignore[arg-type]
            cases.append((text, expected))
    return cases


VALID = _valid_topics()
VALID_TEXTS = {text for text, _ in VALID}


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_every_protocol_topic_parses_and_round_trips(text: str, expected: Topic) -> None:
    topic = parse_topic(text)

    assert topic == expected
    assert str(topic) == text
    assert topic.format() == text


def test_the_only_six_level_topic_is_reader_success_command() -> None:
    six_level = {text for text in VALID_TEXTS if text.count("/") == 5}

    assert six_level == {
        f"cmnd/{DEV}/access-control-mode/{j}/reader-{n}/success" for j in CONNECTORS for n in (1, 2)
    }


def test_iter_topics_yields_exactly_the_protocol_table() -> None:
    assert sorted(str(t) for t in iter_topics(MAC)) == sorted(VALID_TEXTS)


def test_all_other_well_formed_combinations_are_rejected() -> None:
    names = {f"{stem}-{n}" for _, _, stem, idx, _, _ in PROTOCOL_TABLE for n in idx or ()}
    names |= {stem for _, _, stem, _, _, _ in PROTOCOL_TABLE}
    modes = {mode for _, mode, _, _, _, _ in PROTOCOL_TABLE}
    checked = 0
    for kind, mode, name, sub in itertools.product(
        ("stat", "tele", "cmnd"), modes, names, ("", "/success")
    ):
        text = f"{kind}/{DEV}/{mode}/J1/{name}{sub}"
        if text not in VALID_TEXTS:
            with pytest.raises(TopicError):
                parse_topic(text)
            checked += 1
    assert checked > 300


TOPIC = f"stat/{DEV}/access-control-mode/J1/strike-1"

REJECTED = [
    # (topic, level, level name, offending value, message fragment)
    ("", 0, "topic", "", "is empty"),
    (f"stat/{DEV}/access-control-mode/J1", 0, "topic", None, "has 4 levels"),
    (f"{TOPIC}/success/x", 0, "topic", None, "has 7 levels"),
    (f"status/{DEV}/access-control-mode/J1/strike-1", 1, "type", "status", "not one of stat"),
    (f"STAT/{DEV}/access-control-mode/J1/strike-1", 1, "type", "STAT", "not one of"),
    (f"/stat/{DEV}/access-control-mode/J1/strike-1", 1, "type", "", "not one of"),
    (f"stat/{MAC}/access-control-mode/J1/strike-1", 2, "device", MAC, "f2-<12 lowercase hex"),
    (f"stat/f2-{MAC.upper()}/alarm-mode/J1/siren-1", 2, "device", f"f2-{MAC.upper()}", "lowercase"),
    (f"stat/f2-{MAC[:-1]}/alarm-mode/J1/siren-1", 2, "device", f"f2-{MAC[:-1]}", "f2-<"),
    (f"stat/f2-{MAC[:-1]}g/alarm-mode/J1/siren-1", 2, "device", f"f2-{MAC[:-1]}g", "f2-<"),
    ("stat/f2-e4:fd:45:f6:54:be/alarm-mode/J1/siren-1", 2, "device", "f2-e4:fd:45:f6:54:be", "f2"),
    (f"stat/{DEV}/access-mode/J1/strike-1", 3, "mode", "access-mode", "not one of access-control"),
    (f"stat/{DEV}/access-control-mode/J9/strike-1", 4, "connector", "J9", "not one of J1, J2"),
    (f"stat/{DEV}/access-control-mode/j1/strike-1", 4, "connector", "j1", "not one of"),
    (f"stat/{DEV}/access-control-mode/J0/strike-1", 4, "connector", "J0", "not one of"),
    (f"tele/{DEV}/sensor-mode/J1/thermostat-1", 5, "component", "thermostat-1", "not a component"),
    (f"stat/{DEV}/alarm-mode/J1/strike-1", 5, "component", "strike-1", "belongs to access-control"),
    (f"tele/{DEV}/alarm-mode/J1/sensor-1", 5, "component", "sensor-1", "belongs to sensor-mode"),
    (f"tele/{DEV}/sensor-mode/J1/sensor-7", 5, "component", "sensor-7", "sensor-<1..6>"),
    (f"tele/{DEV}/sensor-mode/J1/sensor-0", 5, "component", "sensor-0", "invalid index"),
    (f"tele/{DEV}/sensor-mode/J1/sensor-01", 5, "component", "sensor-01", "invalid index"),
    (f"tele/{DEV}/sensor-mode/J1/sensor", 5, "component", "sensor", "needs an index"),
    (f"stat/{DEV}/access-control-mode/J1/strike-3", 5, "component", "strike-3", "strike-<1..2>"),
    (f"stat/{DEV}/alarm-mode/J1/siren-3", 5, "component", "siren-3", "siren-<1..2>"),
    (f"stat/{DEV}/alarm-mode/J1/motion-sensor-6", 5, "component", "motion-sensor-6", "<1..5>"),
    (f"tele/{DEV}/access-control-mode/J1/reader-3", 5, "component", "reader-3", "reader-<1..2>"),
    (f"stat/{DEV}/access-control-mode/J1/door-sensors-1", 5, "component", "door-sensors-1", "no"),
    (f"tele/{DEV}/access-control-mode/J1/strike-1", 1, "type", "tele", "uses stat, cmnd"),
    (f"cmnd/{DEV}/sensor-mode/J1/sensor-1", 1, "type", "cmnd", "uses tele"),
    (f"stat/{DEV}/sensor-mode/J1/sensor-1", 1, "type", "stat", "uses tele"),
    (f"cmnd/{DEV}/access-control-mode/J1/door-sensors", 1, "type", "cmnd", "uses stat"),
    (f"tele/{DEV}/access-control-mode/J1/exit-buttons", 1, "type", "tele", "uses stat"),
    (f"cmnd/{DEV}/alarm-mode/J1/motion-sensor-1", 1, "type", "cmnd", "uses stat"),
    (f"stat/{DEV}/access-control-mode/J1/reader-1", 1, "type", "stat", "uses tele"),
    (f"cmnd/{DEV}/access-control-mode/J1/reader-1", 1, "type", "cmnd", "reader-<1..2>/success"),
    (f"tele/{DEV}/access-control-mode/J1/reader-1/success", 1, "type", "tele", "uses cmnd"),
    (f"cmnd/{DEV}/access-control-mode/J1/strike-1/success", 6, "sub", "success", "only reader"),
    (f"cmnd/{DEV}/access-control-mode/J1/reader-1/fail", 6, "sub", "fail", "not one of success"),
    (f"tele/{DEV}/sensor-mode/J1/sensor-1/", 6, "sub", "", "not one of success"),
]


@pytest.mark.parametrize(
    ("text", "level", "level_name", "value", "fragment"), REJECTED, ids=[r[0] for r in REJECTED]
)
def test_rejection_names_the_offending_level(
    text: str, level: int, level_name: str, value: str | None, fragment: str
) -> None:
    with pytest.raises(TopicError) as info:
        parse_topic(text)

    error = info.value
    assert (error.level, error.level_name) == (level, level_name)
    assert error.value == (text if value is None else value)
    where = "topic" if level == 0 else f"level {level} ({level_name})"
    assert str(error).startswith(f"{where}: {error.value!r} ")
    assert fragment in str(error)


def test_connector_message_matches_the_documented_form() -> None:
    with pytest.raises(TopicError) as info:
        parse_topic(f"stat/{DEV}/access-control-mode/J9/strike-1")

    assert str(info.value) == "level 4 (connector): 'J9' is not one of J1, J2, J3, J4"


def test_topic_error_is_a_value_error_with_a_dead_letter_reason() -> None:
    with pytest.raises(ValueError, match="level 1") as info:
        parse_topic(f"nope/{DEV}/access-control-mode/J1/strike-1")

    assert isinstance(info.value, TopicError)
    assert info.value.reason == "bad_topic"


def test_huge_topic_is_truncated_in_the_message() -> None:
    with pytest.raises(TopicError) as info:
        parse_topic("x" * 70_000)

    assert info.value.value == "x" * 70_000
    assert len(str(info.value)) < 200


def test_parsed_topic_is_immutable() -> None:
    topic = parse_topic(TOPIC)

    with pytest.raises(dataclasses.FrozenInstanceError):
        topic.mac = "000000000000"  # type: ignore[misc]


def test_repeated_parse_gives_equal_topic() -> None:
    assert parse_topic(TOPIC) == parse_topic(str(parse_topic(TOPIC)))


def test_topic_device_and_connector_number() -> None:
    topic = parse_topic(f"tele/{DEV}/sensor-mode/J3/sensor-5")

    assert topic.device == DEV
    assert (topic.connector_number, topic.index) == (3, 5)


def test_make_topic_derives_mode_and_normalizes_mac() -> None:
    topic = make_topic("tele", "E4:FD:45:F6:54:BE", "J2", "sensor-4")

    assert str(topic) == f"tele/{DEV}/sensor-mode/J2/sensor-4"


def test_make_topic_builds_the_six_level_topic() -> None:
    topic = make_topic("cmnd", MAC, "J1", "reader-2", "success")

    assert str(topic) == f"cmnd/{DEV}/access-control-mode/J1/reader-2/success"
    assert topic.sub == "success"


def test_make_topic_rejects_unknown_component_at_level_5() -> None:
    with pytest.raises(TopicError) as info:
        make_topic("tele", MAC, "J1", "sensor-9")

    assert (info.value.level, info.value.value) == (5, "sensor-9")


@pytest.mark.parametrize(
    "text", ["e4:fd:45:f6:54:be", "E4:FD:45:F6:54:BE", "e4-fd-45-f6-54-be", "E4FD45F654BE", MAC]
)
def test_normalize_mac_accepts_common_forms(text: str) -> None:
    assert normalize_mac(text) == MAC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "e4:fd:45:f6:54",
        "e4:fd:45:f6:54:be:00",
        "e4:fd-45:f6:54:be",  # mixed separators
        "e4fd:45f6:54be",
        "e4fd.45f6.54be",
        "e4fd45f654bg",
        "e4fd45f654b",
        " e4fd45f654be",
        "e4::fd45f654be:",
    ],
)
def test_normalize_mac_rejects_other_strings(text: str) -> None:
    with pytest.raises(ValueError, match="not a MAC address"):
        normalize_mac(text)


def test_device_cn_and_mac_from_cn_are_inverse() -> None:
    assert device_cn("E4-FD-45-F6-54-BE") == DEV
    assert mac_from_cn(DEV) == MAC


@pytest.mark.parametrize("cn", [MAC, f"f2-{MAC.upper()}", f"f3-{MAC}", f"f2-{MAC}0", "f2-"])
def test_mac_from_cn_rejects_anything_but_the_topic_level_form(cn: str) -> None:
    with pytest.raises(ValueError, match="not a device CN"):
        mac_from_cn(cn)


@pytest.mark.parametrize(
    ("topic", "device"),
    [
        ("tele/f2-aabbccddee01/sensor-mode/J3/sensor-1", "f2-aabbccddee01"),
        ("stat/not-a-device/alarm-mode/J1/siren-1", "not-a-device"),
        ("garbage", "garbage"),
        ("a/b", "b"),
    ],
)
def test_device_level_names_the_sender_of_any_topic(topic: str, device: str) -> None:
    assert device_level(topic) == device
