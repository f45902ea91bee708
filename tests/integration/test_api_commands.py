"""Commands end to end: the api (in-process, its svc-api-commands identity) publishes to a
Mosquitto with the production configuration and ACL, a simulated controller (`f2pipe
simulator`, enrolled through certgen) answers on stat, and registry.commands follows:
queued → sent → confirmed | timed_out | failed.

One stack for the module (SimStack: certgen, broker, two seeded demo controllers, the
simulator in normal mode); one api app on it with its command client."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from f2pipe.seed import demo_mac
from f2pipe_api.app import create_app
from f2pipe_api.command_link import MqttCommander, MqttLink, OnChange
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.store import PostgresStore
from f2pipe_api.tokens import Role, create_token
from f2pipe_devtools.servers import PostgresServer, TcpProxy, free_port
from tests.integration.apikit import Api, api_conninfo, problem
from tests.integration.simkit import HOST, SimStack, SimulatorProcess
from tests.integration.tlskit import Identity

pytestmark = pytest.mark.integration

CONTROLLERS = 2
MAC = demo_mac(1)
SILENT = "aabbccddeeff"  # registered through the api; no simulator answers for it
FINAL = ("confirmed", "timed_out", "failed")
CHANGES: list[dict[str, Any]] = []  # what the module api's on_change hook was given


@pytest.fixture(scope="module")
def stack(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimStack]:
    conninfo = postgres_server.create_database(f"commands_{os.getpid()}")
    started = SimStack.start(tmp_path_factory.mktemp("commands"), conninfo, CONTROLLERS)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def simulator(stack: SimStack) -> Iterator[SimulatorProcess]:
    env = stack.simulator_env(stack.root / "state", free_port(), PUBLISH_INTERVAL="5",
                              SIMULATOR_EVENT_INTERVAL="30")  # fmt: skip
    sim = SimulatorProcess(env, [], stack.root / "simulator.log").start()
    try:
        sim.wait_connected(CONTROLLERS)
        yield sim
    finally:
        sim.kill()


def commanding_api(
    stack: SimStack,
    identity: Identity,
    *,
    port: int | None = None,
    wait: bool = True,
    on_change: OnChange | None = None,
) -> Iterator[tuple[Api, MqttCommander]]:
    """The api app with a command client logged in to the broker as `identity` (through
    `port` when given), connected unless `wait` is false."""
    conninfo = api_conninfo(stack.conninfo)
    tokens = {
        role: create_token(stack.conninfo, f"cmd-{role.value}-{os.urandom(3).hex()}", role)[0]
        for role in Role
    }
    db = PostgresStore(conninfo)
    link = MqttLink(HOST, port or stack.broker.port, str(stack.pki.ca_file), str(identity.cert),
                    str(identity.key))  # fmt: skip
    commander = MqttCommander(link, db, on_change)
    app = create_app(db=db, metrics=ApiMetrics(), commands=commander, command_timeout=10)
    with TestClient(app) as http:
        if wait:
            connected(commander)
        yield Api(http, stack.conninfo, tokens), commander


def connected(commander: MqttCommander, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not commander.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert commander.connected, "the api's command client did not connect"
    time.sleep(0.3)  # its SUBACK


@pytest.fixture(scope="module")
def api(stack: SimStack, simulator: SimulatorProcess) -> Iterator[Api]:
    identity = stack.pki.service("api-commands")
    for running, _ in commanding_api(stack, identity, on_change=CHANGES.append):
        yield running


def send(api: Api, body: dict[str, Any], mac: str = MAC) -> dict[str, Any]:
    r = api.http.post(f"/v1/controllers/{mac}/commands", json=body, headers=api.as_(Role.operator))
    assert r.status_code == 202, r.text
    result: dict[str, Any] = r.json()
    return result


def wait_for(api: Api, command_id: int, *statuses: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = api.http.get(f"/v1/commands/{command_id}", headers=api.as_(Role.viewer))
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"command {command_id} is {body.get('status')}, not {statuses}: {body}")


def test_a_strike_toggle_is_confirmed_then_its_revert_recorded(api: Api) -> None:
    sent = send(api, {"connector": "J1", "component": "strike-1",
                      "payload": {"power-flag": 2, "period": 5}})  # fmt: skip
    assert sent["status"] in ("queued", "sent")
    assert sent["topic"] == f"cmnd/f2-{MAC}/access-control-mode/J1/strike-1"
    assert sent["payload"] == {"power-flag": 2, "period": 5}
    confirmed = wait_for(api, sent["id"], *FINAL)
    assert confirmed["status"] == "confirmed", confirmed
    assert confirmed["reported_status"] is True
    assert confirmed["sent_at"] is not None
    assert confirmed["reverted_at"] is None  # the strike holds for its period
    started = time.monotonic()
    while time.monotonic() - started < 15:
        reverted = wait_for(api, sent["id"], "confirmed")
        if reverted["reverted_at"] is not None:
            break
        time.sleep(0.2)
    assert reverted["reverted_at"] is not None, reverted
    held = _at(reverted["reverted_at"]) - _at(confirmed["finished_at"])
    assert 4 <= held <= 8, held  # the period, 5 s, give or take the round trips
    # The hook saw it stored, confirmed (sent before or after: PUBACK and report race),
    # and reverted.
    seen = [(c["status"], c["reverted_at"] is not None) for c in CHANGES if c["id"] == sent["id"]]
    assert seen[0] == ("queued", False)
    assert ("confirmed", False) in seen
    assert seen[-1] == ("confirmed", True)


def _at(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


def test_sirens_and_state_requests_are_confirmed_by_their_answers(api: Api) -> None:
    on = send(api, {"connector": "J2", "component": "siren-1", "payload": 1})
    assert wait_for(api, on["id"], *FINAL)["status"] == "confirmed"
    state = send(api, {"connector": "J2", "component": "siren-1"})
    assert state["payload"] is None
    asked = wait_for(api, state["id"], *FINAL)
    assert (asked["status"], asked["reported_status"]) == ("confirmed", True)
    off = send(api, {"connector": "J2", "component": "siren-1", "payload": 0})
    done = wait_for(api, off["id"], *FINAL)
    assert (done["status"], done["reported_status"]) == ("confirmed", False)
    strike = send(api, {"connector": "J1", "component": "strike-1", "payload": {"power-flag": 0}})
    assert wait_for(api, strike["id"], *FINAL)["status"] == "confirmed"


def test_a_reader_signal_ends_as_sent(api: Api) -> None:
    signal = send(api, {"connector": "J1", "component": "reader-1", "payload": 1, "timeout": 1})
    assert signal["topic"].endswith("/J1/reader-1/success")
    wait_for(api, signal["id"], "sent")
    time.sleep(2.5)  # past its deadline: sent is final, the sweep leaves it
    assert wait_for(api, signal["id"], "sent", timeout=1)["finished_at"] is None


def silent(api: Api) -> None:
    """SILENT registered, with J1 in access-control-mode and no other connector."""
    if api.sql("SELECT 1 FROM registry.devices WHERE mac = %s", SILENT):
        return
    api.register(SILENT)
    url, mode = f"/v1/controllers/{SILENT}/connectors/J1", {"mode": "access-control-mode"}
    r = api.http.put(url, json=mode, headers=api.as_(Role.operator))
    assert r.status_code in (200, 201), r.text


def test_a_command_nobody_answers_times_out_at_its_deadline(api: Api) -> None:
    silent(api)
    sent = send(api, {"connector": "J1", "component": "strike-2", "payload": {"power-flag": 1},
                      "timeout": 2}, mac=SILENT)  # fmt: skip
    wait_for(api, sent["id"], "sent", "timed_out")
    out = wait_for(api, sent["id"], *FINAL, timeout=10)
    assert out["status"] == "timed_out", out
    assert "no agreeing state report" in out["detail"]
    assert 2 <= _at(out["finished_at"]) - _at(out["created_at"]) <= 4.5


def test_the_broker_refusing_a_command_fails_it(stack: SimStack, api: Api) -> None:
    # svc-bridge may read stat and tele, never write cmnd: the broker's PUBACK says 0x87.
    for bridge, _ in commanding_api(stack, stack.pki.service("bridge")):
        sent = send(bridge, {"connector": "J1", "component": "strike-1",
                             "payload": {"power-flag": 1}})  # fmt: skip
        out = wait_for(bridge, sent["id"], *FINAL)
        assert out["status"] == "failed", out
        assert "0x87" in out["detail"], out["detail"]
        assert out["sent_at"] is None


def test_a_command_without_a_broker_connection_fails_at_once(stack: SimStack, api: Api) -> None:
    identity = stack.pki.service("api-commands")
    for away, _ in commanding_api(stack, identity, port=free_port(), wait=False):
        sent = send(away, {"connector": "J1", "component": "strike-1"})
        assert sent["status"] == "failed"
        assert "not connected" in sent["detail"]


def test_after_the_connection_drops_the_api_reconnects_and_sends_again(
    stack: SimStack, api: Api
) -> None:
    # Another identity than the module's api (svc-operator: the same rights): one CN is one
    # client id, and two clients with one id would take each other's session over.
    proxy = TcpProxy(stack.broker.port).start()
    try:
        for via, commander in commanding_api(stack, stack.pki.service("operator"), port=proxy.port):
            on = send(via, {"connector": "J2", "component": "siren-2", "payload": 1})
            assert wait_for(via, on["id"], *FINAL)["status"] == "confirmed"
            proxy.cut()
            deadline = time.monotonic() + 10
            while commander.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            away = send(via, {"connector": "J2", "component": "siren-2", "payload": 0})
            assert (away["status"], away["detail"]) == (
                "failed",
                "the api is not connected to the MQTT broker",
            )
            proxy.restore()
            connected(commander, timeout=15)
            off = send(via, {"connector": "J2", "component": "siren-2", "payload": 0})
            done = wait_for(via, off["id"], *FINAL)
            assert (done["status"], done["reported_status"]) == ("confirmed", False)
    finally:
        proxy.cut()


@pytest.mark.parametrize(
    ("mac", "body", "status", "reason"),
    [
        ("0000000000ff", {"connector": "J1", "component": "strike-1"}, 404, "unknown_mac"),
        (SILENT, {"connector": "J2", "component": "siren-1"}, 404, "unknown_connector"),
        (MAC, {"connector": "J1", "component": "siren-1", "payload": 1}, 422, "wrong_mode"),
        (MAC, {"connector": "J1", "component": "strike-1", "payload": {"power-flag": 2}},
         422, "bad_command"),
        (MAC, {"connector": "J2", "component": "siren-1", "payload": True}, 422, "bad_command"),
        (MAC, {"connector": "J1", "component": "reader-1"}, 422, "bad_command"),
        (MAC, {"connector": "J1", "component": "door-sensors"}, 422, "bad_command"),
        (MAC, {"connector": "J5", "component": "strike-1"}, 422, "invalid_request"),
        (MAC, {"connector": "J1", "component": "strike-1", "timeout": 0}, 422, "invalid_request"),
        (MAC, {"connector": "J1", "component": "strike-1", "extra": 1}, 422, "invalid_request"),
    ],
)  # fmt: skip
def test_commands_that_do_not_fit_are_refused_and_not_stored(
    api: Api, mac: str, body: dict[str, Any], status: int, reason: str
) -> None:
    silent(api)
    before = api.sql("SELECT count(*) FROM registry.commands")[0][0]
    r = api.http.post(f"/v1/controllers/{mac}/commands", json=body,
                      headers=api.as_(Role.operator))  # fmt: skip
    problem(r, status, reason)
    assert api.sql("SELECT count(*) FROM registry.commands")[0][0] == before


def test_history_lists_newest_first_and_each_command_is_audited(api: Api) -> None:
    first = send(api, {"connector": "J1", "component": "strike-1"})
    second = send(api, {"connector": "J2", "component": "siren-1"})
    wait_for(api, second["id"], *FINAL)
    wait_for(api, first["id"], *FINAL)
    r = api.http.get(f"/v1/controllers/{MAC}/commands", params={"limit": 2},
                     headers=api.as_(Role.viewer))  # fmt: skip
    page = r.json()
    assert [c["id"] for c in page["items"]] == [second["id"], first["id"]]
    assert page["total"] >= 2
    r = api.http.get(f"/v1/controllers/{MAC}/commands", params={"status": "failed"},
                     headers=api.as_(Role.viewer))  # fmt: skip
    assert all(c["status"] == "failed" for c in r.json()["items"])
    problem(api.http.get("/v1/controllers/0000000000ff/commands", headers=api.as_(Role.viewer)),
            404, "unknown_mac")  # fmt: skip
    problem(api.http.get("/v1/commands/999999", headers=api.as_(Role.viewer)), 404,
            "unknown_command")  # fmt: skip
    rows = api.sql(
        "SELECT actor, action, target, after FROM registry.audit_log "
        "WHERE action = 'command.send' AND (after->>'id')::bigint = %s",
        second["id"],
    )
    assert len(rows) == 1
    actor, _, target, after = rows[0]
    assert actor.startswith("cmd-operator-")
    assert target == f"controller:{MAC}"
    assert after["topic"] == f"cmnd/f2-{MAC}/alarm-mode/J2/siren-1"
    assert second["actor"] == actor


def test_without_an_mqtt_identity_commands_answer_503(stack: SimStack) -> None:
    tokens = {role: create_token(stack.conninfo, f"nocmd-{role.value}", role)[0] for role in Role}
    app = create_app(db=PostgresStore(api_conninfo(stack.conninfo)), metrics=ApiMetrics())
    with TestClient(app) as http:
        body = {"connector": "J1", "component": "strike-1"}
        bearer = {"Authorization": f"Bearer {tokens[Role.operator]}"}
        r = http.post(f"/v1/controllers/{MAC}/commands", json=body, headers=bearer)
        problem(r, 503, "commands_unavailable")
