"""What a command is, before it is stored: its topic, its wire payload (validated by the
shared command models, f2pipe_shared.payloads), and what answer confirms it.

- strike-<n>: `{"power-flag": 0|1, ...}` is confirmed by a stat report with status false|true;
  `{"power-flag": 2, "period": s}` (toggle) by the first report, whatever its status (a
  toggle inverts the strike: a powered strike answers false), and the next report of the
  opposite status is its revert;
- siren-<n>: `1`/`0`, confirmed by status true/false;
- strike or siren with no payload: "report your state", confirmed by any report;
- reader-<n>: `1`/`2`/`3` on `cmnd/…/reader-<n>/success`; the protocol has no answer, so
  the broker's PUBACK (`sent`) is its final state.

Pure functions: no I/O (tests/unit/test_api_command_rules.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import JsonValue

from f2pipe_shared.payloads import (
    PayloadError,
    PowerFlag,
    SirenCommand,
    StrikeCommand,
    encode_payload,
    parse_payload,
)
from f2pipe_shared.topics import COMPONENT_RULES, ComponentKind, Mode, TopicError, make_topic

COMMANDABLE = (ComponentKind.STRIKE, ComponentKind.SIREN, ComponentKind.READER)


class CommandRefused(ValueError):
    """The command does not fit its component; `reason` is the problem's."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Plan:
    topic: str
    mode: Mode
    wire: bytes  # what is published: canonical JSON, or b"" for a state request
    payload: JsonValue  # the command as stored and shown (None: a state request)
    expect: bool | None  # the status that confirms it; None: any report
    awaits_report: bool  # False: PUBACK is final (reader signals)
    toggle: bool


def plan(mac: str, connector: str, component: str, payload: JsonValue) -> Plan:
    """The command `payload` for `component` on `connector`, or CommandRefused."""
    rule = next((r for r in COMPONENT_RULES if component in r.names()), None)
    if rule is None:
        commandable = ", ".join(r.pattern() for r in COMPONENT_RULES if r.kind in COMMANDABLE)
        raise CommandRefused("bad_command", f"component: expected one of {commandable}")
    kind = rule.kind
    if kind not in COMMANDABLE:
        raise CommandRefused("bad_command", f"component: {rule.pattern()} takes no commands")
    sub = "success" if kind is ComponentKind.READER else None
    try:
        topic = make_topic("cmnd", mac, connector, component, sub)
    except TopicError as exc:  # the rules above make this unreachable; never a 500
        raise CommandRefused("bad_command", f"topic: {exc}") from None
    raw = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    try:
        command = parse_payload(topic, raw)
    except PayloadError as exc:
        raise CommandRefused("bad_command", f"payload: {exc}") from None
    wire = encode_payload(command)
    stored: JsonValue = json.loads(wire) if wire else None
    expect: bool | None = None
    if isinstance(command, StrikeCommand) and command.power_flag is not PowerFlag.TOGGLE:
        expect = command.power_flag is PowerFlag.POWERED
    elif isinstance(command, SirenCommand):
        expect = command.on
    toggle = isinstance(command, StrikeCommand) and command.power_flag is PowerFlag.TOGGLE
    return Plan(
        topic=topic.format(),
        mode=topic.mode,
        wire=wire,
        payload=stored,
        expect=expect,
        awaits_report=kind is not ComponentKind.READER,
        toggle=toggle,
    )


def confirms(expect: bool | None, status: bool) -> bool:
    """Whether a report of `status` confirms a command that expects `expect` (as the SQL of
    command_store.confirm_report decides it)."""
    return expect is None or expect is status
