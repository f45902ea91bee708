"""What the simulator tests share: the fleet's size, the load run, registry queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from f2pipe_devtools.servers import free_port
from f2pipe_devtools.testkit.ledger import read_ledger
from f2pipe_shared.decoding import DecodingSpec, compile_template
from tests.integration.simkit import SimStack, SimulatorProcess

CONTROLLERS = 50
SENSORS_PER_CONTROLLER = 5  # the demo layout: J3 sensor-1..3, J4 sensor-1..2
LOAD = ["--load", "--count", "1500", "--seed", "7", "--event-share", "0.2"]
START = ["--start-time", "2024-05-01 00:00:00"]
MAC = "aabbccddee01"


def query(stack: SimStack, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(stack.conninfo) as conn:
        return conn.execute(sql, params).fetchall()


def run_load(stack: SimStack, state_dir: Path, ledger: Path, *extra: str) -> SimulatorProcess:
    env = stack.simulator_env(state_dir, free_port())
    sim = SimulatorProcess(
        env, [*LOAD, *START, "--ledger", str(ledger), *extra], ledger.with_suffix(".log")
    )
    sim.start()
    assert sim.wait(90) == 0, sim.log()
    return sim


def published(ledger: Path) -> list[dict[str, Any]]:
    return [line for line in read_ledger(ledger) if line["type"] == "publish"]


def decoders(stack: SimStack) -> dict[int, tuple[list[str], Any]]:
    """Template id -> (datapoint keys, shared decoder) from the registry's own rows."""
    rows = query(
        stack,
        """SELECT template_id, key, "offset", length, encoding, byte_order, decimals
           FROM registry.datapoints WHERE encoding IS NOT NULL
           ORDER BY template_id, sort_order, id""",
    )
    specs: dict[int, list[tuple[str, DecodingSpec]]] = {}
    for template_id, key, offset, length, encoding, byte_order, decimals in rows:
        spec = DecodingSpec(
            offset=offset,
            length=length,
            encoding=encoding,
            byte_order=byte_order,
            decimals=decimals,
        )
        specs.setdefault(template_id, []).append((key, spec))
    return {
        t: ([k for k, _ in points], compile_template([s for _, s in points]))
        for t, points in specs.items()
    }
