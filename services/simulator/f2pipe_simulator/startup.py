"""Fleet start-up: which of the registry's controllers this run simulates, and their
enrolment (a certificate for each, reused from the state directory while it is good)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping

from f2pipe_simulator.identity import StateDir
from f2pipe_simulator.ports import EnrolmentEndpoint
from f2pipe_simulator.registry import ControllerSpec

log = logging.getLogger("f2pipe.simulator")


def choose_fleet(
    registered: list[ControllerSpec],
    codes: Mapping[str, str],
    state: StateDir | None,
    *,
    controllers: int | None = None,
    shard: tuple[int, int] | None = None,
) -> list[ControllerSpec]:
    """The controllers this run can simulate, in MAC order: with TLS (``state`` given) those
    with a claim code or a certificate; then the first ``controllers``; then every N-th of
    them from the K-th (``shard`` K/N)."""
    fleet = registered
    if state is not None:
        fleet = [c for c in fleet if c.mac in codes or state.files(c.cn).cert.exists()]
    if controllers:
        fleet = fleet[:controllers]
    if shard:
        k, n = shard
        fleet = fleet[k - 1 :: n]
    return fleet


async def enrol_fleet(
    fleet: list[ControllerSpec],
    codes: Mapping[str, str],
    enrolment: EnrolmentEndpoint | None,
) -> list[ControllerSpec]:
    """The controllers that have a usable certificate now; ``enrolment`` None: plain MQTT,
    every controller is ready as it is."""
    if enrolment is None:
        log.warning("MQTT_TLS=false: no enrolment, plain MQTT (test brokers only)")
        return fleet
    report = await enrolment.enrol([c.mac for c in fleet], codes)
    log.info(
        "enrolment done",
        extra={
            "enrolled": len(report.enrolled),
            "reused": len(report.reused),
            "failed": len(report.failed),
            "seconds": round(report.seconds, 2),
            "reasons": dict(Counter(report.failed.values())),
        },
    )
    ready = set(report.ready)
    return [c for c in fleet if c.mac in ready]
