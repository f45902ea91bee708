"""What passes between a controller, its MQTT connection and the ledger: a message to
publish (with what it means), and what a command did."""

from __future__ import annotations

from dataclasses import dataclass, field

from f2pipe_shared.topics import ComponentKind
from f2pipe_simulator.registry import Component


@dataclass(slots=True)
class Message:
    """One message to publish, with what it means (for the ledger)."""

    kind: ComponentKind
    mac: str
    component: Component
    topic: str
    payload: bytes
    timestamp: str
    readings: dict[str, float] = field(default_factory=dict)
    state: dict[str, bool] | None = None
    data: str | None = None
    seq: int = 0  # the order it was handed to MQTT (set when it was)


@dataclass(slots=True)
class CommandOutcome:
    """What a command did: ``result`` and ``kind`` are metric labels."""

    result: str  # answered, reported, signalled, invalid, wrong_mode, ignored
    kind: str  # the component kind (strike, siren, reader), "unknown" for a bad topic
    detail: str = ""
    answers: int = 0
