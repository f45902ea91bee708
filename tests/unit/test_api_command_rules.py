"""command_rules: a command's topic, wire payload and what confirms it, from the shared
command models; a command that does not fit its component is refused with a reason."""

from __future__ import annotations

import json

import pytest
from pydantic import JsonValue

from f2pipe_api.command_rules import CommandRefused, confirms, plan

MAC = "aabbccddee01"


def test_a_strike_toggle_is_confirmed_by_any_report_and_published_canonically() -> None:
    p = plan(MAC, "J1", "strike-1", {"period": 5, "power-flag": 2})
    assert p.topic == f"cmnd/f2-{MAC}/access-control-mode/J1/strike-1"
    assert p.mode == "access-control-mode"
    assert p.wire == b'{"power-flag":2,"period":5}'
    assert p.payload == {"power-flag": 2, "period": 5}
    assert (p.expect, p.awaits_report, p.toggle) == (None, True, True)


@pytest.mark.parametrize(
    ("component", "payload", "expect"),
    [
        ("strike-2", {"power-flag": 1}, True),
        ("strike-1", {"power-flag": 0}, False),
        ("siren-1", 1, True),
        ("siren-2", 0, False),
        ("strike-1", None, None),  # report your state: any report
        ("siren-1", None, None),
    ],
)
def test_what_confirms_a_strike_or_siren(
    component: str, payload: JsonValue, expect: bool | None
) -> None:
    connector = "J2" if component.startswith("siren") else "J1"
    p = plan(MAC, connector, component, payload)
    assert (p.expect, p.awaits_report, p.toggle) == (expect, True, False)
    assert p.wire == (
        b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    )
    assert confirms(p.expect, True) is (expect is not False)
    assert confirms(p.expect, False) is (expect is not True)


def test_a_reader_signal_goes_to_its_success_topic_and_awaits_no_report() -> None:
    p = plan(MAC, "J1", "reader-2", 1)
    assert p.topic == f"cmnd/f2-{MAC}/access-control-mode/J1/reader-2/success"
    assert p.wire == b"1"
    assert (p.awaits_report, p.toggle) == (False, False)


@pytest.mark.parametrize(
    ("component", "payload", "says"),
    [
        ("strike-1", {"power-flag": 2}, "needs a period"),
        ("strike-1", {"power-flag": 1, "period": 256}, "period"),
        ("strike-1", {"power-flag": 3}, "power-flag"),
        ("strike-1", {"power-flag": True}, "power-flag"),
        ("strike-1", {"power-flag": 1, "colour": "red"}, "colour"),
        ("strike-1", 1, "StrikeCommand"),
        ("siren-1", True, "SirenCommand"),
        ("siren-1", 2, "SirenCommand"),
        ("reader-1", None, "JSON"),  # a reader has no state to report
        ("reader-1", 4, "ReaderSignal"),
        ("door-sensors", None, "takes no commands"),
        ("sensor-1", 1, "takes no commands"),
        ("strike-3", None, "expected one of"),
        ("nothing", None, "expected one of"),
    ],
)
def test_a_command_that_does_not_fit_is_refused(
    component: str, payload: JsonValue, says: str
) -> None:
    with pytest.raises(CommandRefused) as refused:
        plan(MAC, "J1", component, payload)
    assert refused.value.reason == "bad_command"
    assert says in refused.value.detail
