"""The ledger: a JSON-lines record of what the simulator published, for tests and benchmarks
(read back by `f2pipe_devtools.testkit.ledger`).

One object per line, told apart by ``type``:

- ``header`` (first line): the run's parameters and the templates' datapoint ids, so that a
  reading can be turned into the row ``(timestamp, device_id, datapoint_id, value)`` it must
  become in the database;
- ``publish``: one message the broker acknowledged, in acknowledgement order (``seq`` is the
  order in which they were handed to MQTT), with the readings it encodes;
- ``command``: one command received and what the controller did with it;
- ``summary`` (last line, written on a clean stop): messages per kind, readings, messages
  never acknowledged, the run's duration and rate.

Only acknowledged messages are ``publish`` lines: those the broker has, and so everything a
subscriber with a persistent session (the bridge) must receive.

The file is created by ``header``, when the controllers start: a run that only enrols, or is
stopped while enrolling, writes none.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import IO, Any

from f2pipe_shared.registry import Template
from f2pipe_simulator.messages import CommandOutcome, Message
from f2pipe_simulator.registry import ControllerSpec

FORMAT_VERSION = 1


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._out: IO[str] | None = None
        self.kinds: Counter[str] = Counter()
        self.readings = 0
        self.commands = 0

    def header(self, fleet: list[ControllerSpec], **run: Any) -> None:
        """Create the file and write the first line: ``run``'s parameters, the templates."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("w", encoding="utf-8", buffering=1 << 20)
        templates: dict[int, Template] = {}
        for controller in fleet:
            for component in controller.components:
                if component.template is not None:
                    templates[component.template.id] = component.template
        self._write(
            {
                "type": "header",
                "version": FORMAT_VERSION,
                **run,
                "controllers": [controller.mac for controller in fleet],
                "templates": {
                    str(t.id): {
                        "key": t.key,
                        "datapoints": {
                            dp.key: {"id": dp.id, "unit": dp.unit}
                            for dp in (*t.frame_points, *t.field_points)
                        },
                    }
                    for t in templates.values()
                },
            }
        )

    def published(self, message: Message) -> None:
        self.kinds[message.kind.value] += 1
        self.readings += len(message.readings)
        component = message.component
        line: dict[str, Any] = {
            "type": "publish",
            "seq": message.seq,
            "kind": message.kind.value,
            "mac": message.mac,
            "connector": component.connector,
            "component": component.name,
            "device_id": component.device_id,
            "template_id": None if component.template is None else component.template.id,
            "timestamp": message.timestamp,
            "readings": message.readings,
            "topic": message.topic,
            "payload": message.payload.decode(),
        }
        if message.state is not None:
            line["state"] = message.state
        if message.data is not None:
            line["data"] = message.data
        self._write(line)

    def command(self, mac: str, topic: str, payload: bytes, outcome: CommandOutcome) -> None:
        self.commands += 1
        self._write(
            {
                "type": "command",
                "mac": mac,
                "topic": topic,
                "payload": payload.decode(errors="replace"),
                "result": outcome.result,
                "detail": outcome.detail,
                "answers": outcome.answers,
            }
        )

    def summary(self, **run: Any) -> None:
        self._write(
            {
                "type": "summary",
                "published": dict(sorted(self.kinds.items())),
                "messages": sum(self.kinds.values()),
                "readings": self.readings,
                "commands": self.commands,
                **run,
            }
        )

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()

    def _write(self, line: dict[str, Any]) -> None:
        assert self._out is not None, "the header comes first"
        self._out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
