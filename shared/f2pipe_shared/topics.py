"""The MQTT topic grammar of F2 Smart Controllers.

``<stat|tele|cmnd>/f2-<mac>/<mode>/<connector>/<component>[/<sub>]``, validated against the
protocol table (which component lives in which mode, its index range, and the topic types it
uses). ``parse_topic`` runs once per MQTT message, so it is one split plus dict lookups; the
slower diagnosis only runs on the error path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import ClassVar, Literal

TopicKind = Literal["stat", "tele", "cmnd"]
Mode = Literal["access-control-mode", "alarm-mode", "sensor-mode"]
Connector = Literal["J1", "J2", "J3", "J4"]
Sub = Literal["success"]

DEVICE_PREFIX = "f2-"
_HEX_DIGITS = "0123456789abcdef"
_MAX_SHOWN = 80
# Each controller uses a few dozen topics, so a fleet of several hundred fits; beyond that
# the cache just evicts, it never grows.
_CACHE_SIZE = 16384

# Identity maps: a lookup both validates and yields the value typed as its Literal.
_KINDS: dict[str, TopicKind] = {"stat": "stat", "tele": "tele", "cmnd": "cmnd"}
_MODES: dict[str, Mode] = {
    "access-control-mode": "access-control-mode",
    "alarm-mode": "alarm-mode",
    "sensor-mode": "sensor-mode",
}
_CONNECTORS: dict[str, Connector] = {"J1": "J1", "J2": "J2", "J3": "J3", "J4": "J4"}
_SUBS: dict[str, Sub] = {"success": "success"}

# Level 0 stands for the topic as a whole (wrong number of levels, empty topic).
LEVEL_NAMES = ("topic", "type", "device", "mode", "connector", "component", "sub")


class ComponentKind(StrEnum):
    SENSOR = "sensor"
    DOOR_SENSORS = "door_sensors"
    EXIT_BUTTONS = "exit_buttons"
    STRIKE = "strike"
    SIREN = "siren"
    MOTION_SENSOR = "motion_sensor"
    READER = "reader"


@dataclass(frozen=True, slots=True)
class ComponentRule:
    """One row of the protocol table: where a component lives and which topics it uses."""

    kind: ComponentKind
    mode: Mode
    stem: str  # the topic level without its index: "motion-sensor", "door-sensors"
    max_index: int | None  # None: the component takes no "-<n>" index
    types: frozenset[TopicKind]  # topic types of the five-level topic
    success_types: frozenset[TopicKind] = frozenset()  # of "<component>/success"; empty: none

    def names(self) -> tuple[str, ...]:
        """Every topic level this component may appear as: ("strike-1", "strike-2")."""
        if self.max_index is None:
            return (self.stem,)
        return tuple(f"{self.stem}-{n}" for n in range(1, self.max_index + 1))

    def pattern(self) -> str:
        return self.stem if self.max_index is None else f"{self.stem}-<1..{self.max_index}>"


COMPONENT_RULES: tuple[ComponentRule, ...] = (
    ComponentRule(
        ComponentKind.STRIKE, "access-control-mode", "strike", 2, frozenset({"stat", "cmnd"})
    ),
    ComponentRule(
        ComponentKind.DOOR_SENSORS, "access-control-mode", "door-sensors", None, frozenset({"stat"})
    ),
    ComponentRule(
        ComponentKind.EXIT_BUTTONS, "access-control-mode", "exit-buttons", None, frozenset({"stat"})
    ),
    # The protocol only says n >= 1; two readers (one per side of a door) is our choice.
    ComponentRule(
        ComponentKind.READER,
        "access-control-mode",
        "reader",
        2,
        frozenset({"tele"}),
        success_types=frozenset({"cmnd"}),
    ),
    ComponentRule(ComponentKind.SIREN, "alarm-mode", "siren", 2, frozenset({"stat", "cmnd"})),
    ComponentRule(
        ComponentKind.MOTION_SENSOR, "alarm-mode", "motion-sensor", 5, frozenset({"stat"})
    ),
    ComponentRule(ComponentKind.SENSOR, "sensor-mode", "sensor", 6, frozenset({"tele"})),
)

# Component names are unique across modes, so one flat map serves every mode.
_BY_NAME: dict[str, tuple[ComponentRule, int | None]] = {
    name: (rule, None if rule.max_index is None else int(name.rsplit("-", 1)[1]))
    for rule in COMPONENT_RULES
    for name in rule.names()
}
_BY_STEM: dict[str, ComponentRule] = {rule.stem: rule for rule in COMPONENT_RULES}


class TopicError(ValueError):
    """A topic outside the grammar; ``level`` is 1-based, 0 meaning the whole topic."""

    reason: ClassVar[str] = "bad_topic"

    def __init__(self, level: int, value: str, detail: str) -> None:
        self.level = level
        self.level_name = LEVEL_NAMES[level]
        self.value = value
        where = "topic" if level == 0 else f"level {level} ({self.level_name})"
        super().__init__(f"{where}: {_shown(value)} {detail}")


@dataclass(frozen=True, slots=True)
class Topic:
    """A validated topic. Build it with parse_topic or make_topic: __init__ checks nothing."""

    kind: TopicKind
    mac: str
    mode: Mode
    connector: Connector
    component: str
    component_kind: ComponentKind
    index: int | None
    sub: Sub | None = None

    @property
    def device(self) -> str:
        """The device level, ``f2-<mac>``: also the device certificate's CN."""
        return DEVICE_PREFIX + self.mac

    @property
    def connector_number(self) -> int:
        """k of connector ``Jk``: with ``index`` it names the pin position of a sensor."""
        return int(self.connector[1])

    def format(self) -> str:
        base = (
            f"{self.kind}/{DEVICE_PREFIX}{self.mac}/{self.mode}/{self.connector}/{self.component}"
        )
        return base if self.sub is None else f"{base}/{self.sub}"

    def __str__(self) -> str:
        return self.format()


def parse_topic(topic: str) -> Topic:
    """Parse and validate an MQTT topic; raises TopicError naming the offending level."""
    # Topics repeat per device and Topic is immutable: a hit costs ~0.1 us instead of ~1.3
    # (half of that is the frozen dataclass's __init__). Failures are not cached.
    return _parse_cached(topic)


@lru_cache(maxsize=_CACHE_SIZE)
def _parse_cached(topic: str) -> Topic:
    levels = topic.split("/")
    count = len(levels)
    if count not in (5, 6) or not topic:
        raise _level_count_error(topic, count)
    kind = _KINDS.get(levels[0])
    if kind is None:
        raise _not_one_of(1, levels[0], _KINDS)
    mac = _mac_of_device(levels[1])
    if mac is None:
        raise TopicError(2, levels[1], f"is not {DEVICE_PREFIX}<12 lowercase hex digits>")
    mode = _MODES.get(levels[2])
    if mode is None:
        raise _not_one_of(3, levels[2], _MODES)
    connector = _CONNECTORS.get(levels[3])
    if connector is None:
        raise _not_one_of(4, levels[3], _CONNECTORS)
    entry = _BY_NAME.get(levels[4])
    if entry is None or entry[0].mode != mode:
        raise _component_error(levels[4], mode)
    rule, index = entry
    sub = None if count == 5 else _parse_sub(rule, levels[5])
    if kind not in (rule.types if sub is None else rule.success_types):
        raise _kind_error(kind, rule, levels[4], sub)
    return Topic(kind, mac, mode, connector, levels[4], rule.kind, index, sub)


def device_level(topic: str) -> str:
    """The second level of any topic string (the device, `f2-<mac>`, when the topic is
    valid), for naming the sender in logs of topics that may not parse; the whole string
    when it has no second level."""
    levels = topic.split("/", 2)
    return levels[1] if len(levels) > 1 else topic


def make_topic(
    kind: str, mac: str, connector: str, component: str, sub: str | None = None
) -> Topic:
    """Build a validated Topic; the mode follows from the component, the MAC is normalised."""
    entry = _BY_NAME.get(component)
    if entry is None:
        raise TopicError(5, component, "is not a component of any mode")
    levels = [kind, device_cn(mac), entry[0].mode, connector, component]
    return parse_topic("/".join(levels if sub is None else [*levels, sub]))


def iter_topics(mac: str) -> Iterator[Topic]:
    """Every topic the protocol allows for one controller (for simulators and tests)."""
    for rule in COMPONENT_RULES:
        for connector in _CONNECTORS:
            for name in rule.names():
                for kind in sorted(rule.types):
                    yield make_topic(kind, mac, connector, name)
                for kind in sorted(rule.success_types):
                    yield make_topic(kind, mac, connector, name, "success")


def normalize_mac(s: str) -> str:
    """``aa:bb:cc:dd:ee:01``, ``AA-BB-CC-DD-EE-01`` or 12 hex digits -> 12 lowercase hex."""
    candidate = s
    # One separator kind at every byte boundary; mixed or misplaced separators stay and fail.
    if len(s) == 17 and s[2] in ":-" and s[2::3] == s[2] * 5:
        candidate = s.replace(s[2], "")
    mac = candidate.lower()
    if len(mac) != 12 or mac.strip(_HEX_DIGITS):
        raise ValueError(
            f"not a MAC address: {_shown(s)} (expected 12 hex digits, optionally in pairs "
            "separated by ':' or '-')"
        )
    return mac


def device_cn(mac: str) -> str:
    """The device's certificate CN and topic level: ``f2-<mac>``."""
    return DEVICE_PREFIX + normalize_mac(mac)


def mac_from_cn(cn: str) -> str:
    """The MAC inside a device CN ``f2-<12 lowercase hex>`` (exactly the topic level)."""
    mac = _mac_of_device(cn)
    if mac is None:
        raise ValueError(f"not a device CN: {_shown(cn)} (expected f2-<12 lowercase hex digits>)")
    return mac


def _mac_of_device(device: str) -> str | None:
    # str.strip with the hex alphabet leaves nothing iff every character is lowercase hex.
    if len(device) != 15 or not device.startswith(DEVICE_PREFIX):
        return None
    mac = device[3:]
    return None if mac.strip(_HEX_DIGITS) else mac


def _parse_sub(rule: ComponentRule, value: str) -> Sub:
    sub = _SUBS.get(value)
    if sub is None:
        raise _not_one_of(6, value, _SUBS)
    if not rule.success_types:
        raise TopicError(6, value, f"is not allowed after {rule.pattern()}: only reader-<n> has it")
    return sub


def _level_count_error(topic: str, count: int) -> TopicError:
    if not topic:
        return TopicError(0, topic, "is empty")
    return TopicError(
        0, topic, f"has {count} levels; expected 5, or 6 for cmnd/.../reader-<n>/success"
    )


def _not_one_of(level: int, value: str, choices: Iterable[str]) -> TopicError:
    return TopicError(level, value, f"is not one of {', '.join(choices)}")


def _component_error(name: str, mode: Mode) -> TopicError:
    stem, _, number = name.rpartition("-")
    indexed = number.isascii() and number.isdigit()
    rule = _BY_STEM.get(stem if indexed else name)
    if rule is None:
        valid = ", ".join(r.pattern() for r in COMPONENT_RULES if r.mode == mode)
        return TopicError(5, name, f"is not a component of {mode} (expected {valid})")
    if rule.mode != mode:
        return TopicError(5, name, f"belongs to {rule.mode}, not {mode}")
    if rule.max_index is None:
        return TopicError(5, name, f"takes no index: the component is {rule.stem}")
    if not indexed:
        return TopicError(5, name, f"needs an index: expected {rule.pattern()}")
    return TopicError(5, name, f"has an invalid index: expected {rule.pattern()}")


def _kind_error(kind: TopicKind, rule: ComponentRule, name: str, sub: Sub | None) -> TopicError:
    if sub is None:
        detail = f"is not valid for {name} ({rule.pattern()} uses {_kinds(rule.types)})"
        if rule.success_types and kind in rule.success_types:
            detail += f"; {kind} goes to {rule.pattern()}/success"
    else:
        detail = f"is not valid for {name}/{sub} (it uses {_kinds(rule.success_types)})"
    return TopicError(1, kind, detail)


def _kinds(kinds: frozenset[TopicKind]) -> str:
    return ", ".join(k for k in _KINDS if k in kinds)


def _shown(value: str) -> str:
    # Topics can be 64 KiB long: keep messages (which end up in logs) readable.
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else f"{text[: _MAX_SHOWN - 3]}..."
