"""`f2pipe simulator` in normal mode: readings and events, commands, a broker restart, SIGTERM."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from f2pipe_devtools.servers import free_port
from f2pipe_devtools.testkit.ledger import read_ledger
from f2pipe_shared.payloads import Status, parse_payload
from f2pipe_shared.topics import parse_topic
from tests.integration.certgen_harness import metric
from tests.integration.simkit import Operator, Received, SimStack, SimulatorProcess
from tests.integration.simulator.kit import CONTROLLERS, MAC, SENSORS_PER_CONTROLLER

pytestmark = pytest.mark.integration


@dataclass
class Running:
    sim: SimulatorProcess
    ledger: Path
    first: int  # the operator's message count when it started


class Fleet:
    """The module's normal-mode simulator, started when a test needs one and none runs.

    One at a time: two simulators with the same identities would take each other's MQTT
    sessions. A test that stops it (SIGTERM) leaves the next test a new one.
    """

    def __init__(self, stack: SimStack, state_dir: Path, operator: Operator) -> None:
        self.stack, self.state_dir, self.operator = stack, state_dir, operator
        self.current: Running | None = None
        self.started = 0

    def running(self) -> Running:
        current = self.current
        if current is not None and current.sim.proc is not None and current.sim.proc.poll() is None:
            return current
        self.started += 1
        env = self.stack.simulator_env(
            self.state_dir,
            free_port(),
            PUBLISH_INTERVAL="1",
            SIMULATOR_EVENT_INTERVAL="10",
            SIMULATOR_RECONNECT_MIN="0.2",
            SIMULATOR_RECONNECT_MAX="2",
        )
        name = f"normal-{self.started}"
        ledger = self.stack.root / f"{name}.jsonl"
        sim = SimulatorProcess(env, ["--ledger", str(ledger)], self.stack.root / f"{name}.log")
        first = self.operator.count()
        self.current = Running(sim, ledger, first)
        sim.start()
        sim.wait_connected(CONTROLLERS)
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.sim.kill()


@pytest.fixture(scope="module")
def fleet(stack: SimStack, state_dir: Path, operator: Operator) -> Iterator[Fleet]:
    started = Fleet(stack, state_dir, operator)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def running(fleet: Fleet) -> Running:
    return fleet.running()


def test_every_sensor_reports_and_doors_readers_and_motion_change(
    running: Running, operator: Operator
) -> None:
    start = operator.count()
    sensor_topics = {
        f"tele/f2-aabbccddee{n:02x}/sensor-mode/{c}/sensor-{p}"
        for n in range(1, CONTROLLERS + 1)
        for c, p in [("J3", 1), ("J3", 2), ("J3", 3), ("J4", 1), ("J4", 2)]
    }

    def seen(messages: list[Received]) -> tuple[set[str], set[str]]:
        topics = {m.topic for m in messages[start:]}
        kinds = {t.rsplit("/", 1)[1].rstrip("0123456789-") for t in topics}
        return topics, kinds

    received = operator.wait_for(
        lambda m: (
            sensor_topics <= seen(m)[0]
            and {"door-sensors", "reader", "motion-sensor"} <= seen(m)[1]
        ),
        timeout=30,
    )
    topics, _ = seen(received)
    assert sensor_topics <= topics
    for message in received[start:]:
        parse_payload(parse_topic(message.topic), message.payload)  # all valid for the pipeline


def status_answers(operator: Operator, start: int, suffix: str) -> list[bool]:
    answers = []
    for message in operator.since(start):
        if message.topic.startswith("stat/") and message.topic.endswith(suffix):
            answers.append(Status.model_validate_json(message.payload).status)
    return answers


def ask(operator: Operator, topic: str, payload: bytes, suffix: str, count: int = 1) -> list[bool]:
    """Send a command; wait for ``count`` state answers on the matching stat topic."""
    start = operator.count()
    operator.command(topic, payload)
    operator.wait_for(lambda _: len(status_answers(operator, start, suffix)) >= count, 10)
    return status_answers(operator, start, suffix)


def test_strike_commands_get_their_documented_answers(running: Running, operator: Operator) -> None:
    strike = f"cmnd/f2-{MAC}/access-control-mode/J1/strike-1"
    answer = f"f2-{MAC}/access-control-mode/J1/strike-1"
    assert ask(operator, strike, b'{"power-flag":1}', answer) == [True]
    assert ask(operator, strike, b'{"power-flag":0}', answer) == [False]
    assert ask(operator, strike, b"", answer) == [False]  # empty payload: report the state
    started = time.monotonic()
    assert ask(operator, strike, b'{"power-flag":2,"period":1}', answer, count=2) == [True, False]
    assert time.monotonic() - started >= 0.9  # toggled for the period, then back
    assert ask(operator, strike, b"", answer) == [False]


def test_siren_commands_get_their_documented_answers(running: Running, operator: Operator) -> None:
    siren = f"cmnd/f2-{MAC}/alarm-mode/J2/siren-1"
    answer = f"f2-{MAC}/alarm-mode/J2/siren-1"
    assert ask(operator, siren, b"1", answer) == [True]
    assert ask(operator, siren, b"", answer) == [True]
    assert ask(operator, siren, b"0", answer) == [False]
    assert ask(operator, siren, b"", answer) == [False]


def test_reader_success_signals_and_bad_commands_are_taken_without_an_answer(
    running: Running, operator: Operator
) -> None:
    reader = f"cmnd/f2-{MAC}/access-control-mode/J1/reader-1/success"
    start = operator.count()
    for payload in (b"1", b"2", b"3", b"4"):
        operator.command(reader, payload)
    operator.command(f"cmnd/f2-{MAC}/access-control-mode/J1/strike-1", b'{"power-flag":2}')
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = running.sim.metrics_text()
        if metric(text, "simulator_commands_total", kind="strike", result="invalid") >= 1:
            break
        time.sleep(0.1)
    for signal in ("success", "fail_1", "fail_2"):
        assert metric(text, "simulator_reader_signals_total", signal=signal) == 1
    assert metric(text, "simulator_commands_total", kind="reader", result="signalled") == 3
    assert metric(text, "simulator_commands_total", kind="reader", result="invalid") == 1
    assert not [
        m
        for m in operator.since(start)
        if m.topic.startswith(f"stat/f2-{MAC}/access-control-mode/J1/strike")
    ]


def test_a_broker_restart_is_survived(
    stack: SimStack, running: Running, operator: Operator
) -> None:
    stack.broker.stop()
    time.sleep(1.0)
    stopped = operator.count()
    stack.broker.start()
    running.sim.wait_connected(CONTROLLERS, timeout=30)
    text = running.sim.metrics_text()
    assert metric(text, "simulator_disconnects_total") >= CONTROLLERS
    # Every controller publishes again, and the operator's session saw it through.
    macs = {f"f2-aabbccddee{n:02x}" for n in range(1, CONTROLLERS + 1)}
    operator.wait_for(
        lambda m: (
            macs <= {r.topic.split("/")[1] for r in m[stopped:] if r.topic.startswith("tele/")}
        ),
        timeout=30,
    )


def test_sigterm_stops_cleanly_and_the_operator_got_everything_in_the_ledger(
    stack: SimStack, running: Running, operator: Operator
) -> None:
    # Its own commands, so the ledger holds every kind of result whatever ran before.
    operator.command(f"cmnd/f2-{MAC}/access-control-mode/J1/strike-1", b'{"power-flag":1}')
    operator.command(f"cmnd/f2-{MAC}/access-control-mode/J1/strike-1", b"")
    operator.command(f"cmnd/f2-{MAC}/access-control-mode/J1/reader-1/success", b"1")
    operator.command(f"cmnd/f2-{MAC}/access-control-mode/J1/strike-1", b'{"power-flag":2}')
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the invalid one, sent last, counted
        text = running.sim.metrics_text()
        if metric(text, "simulator_commands_total", kind="strike", result="invalid") >= 1:
            break
        time.sleep(0.1)
    time.sleep(1.5)  # a publish interval: readings too, not only answers
    assert running.sim.terminate() == 0
    lines = read_ledger(running.ledger)
    summary = lines[-1]
    assert summary["type"] == "summary"
    assert summary["unacknowledged"] == 0
    sent = {(p["topic"], p["payload"].encode()) for p in lines if p["type"] == "publish"}
    assert summary["messages"] >= len(sent) > CONTROLLERS * SENSORS_PER_CONTROLLER
    commands = [p for p in lines if p["type"] == "command"]
    assert {c["result"] for c in commands} >= {"answered", "reported", "signalled", "invalid"}
    start = running.first
    operator.wait_for(lambda m: sent <= {(r.topic, r.payload) for r in m[start:]}, timeout=15)
    received = {(r.topic, r.payload) for r in operator.since(start)}
    assert sent == received  # at least once: a duplicate after the restart is allowed
