"""How `f2pipe api` sets up its command client from the settings: none without
API_MQTT_CERT_FILE (the routes answer 503), and a one-line refusal to start when the files
it names cannot be used."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from f2pipe_api.command_link import MqttCommander
from f2pipe_api.main import build, main
from f2pipe_api.settings import Settings


def test_without_an_mqtt_identity_the_api_sends_no_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("API_MQTT_CERT_FILE", raising=False)
    monkeypatch.delenv("API_MQTT_KEY_FILE", raising=False)
    parts = build(Settings.load(), host="127.0.0.1", port=1).app.state.api
    assert parts.commands is None


def test_with_one_the_client_takes_the_broker_settings_and_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_MQTT_CERT_FILE", "/nowhere/api-commands.crt")
    monkeypatch.setenv("API_MQTT_KEY_FILE", "/nowhere/api-commands.key")
    monkeypatch.setenv("MQTT_TLS", "false")  # nothing read yet: the files are not needed
    monkeypatch.setenv("MQTT_BROKER_HOST", "broker.example")
    monkeypatch.setenv("API_COMMAND_TIMEOUT", "12")
    parts = build(Settings.load(), host="127.0.0.1", port=1).app.state.api
    assert isinstance(parts.commands, MqttCommander)
    assert (parts.commands.link.host, parts.commands.link.port) == ("broker.example", 8883)
    assert parts.command_timeout == 12


def test_unusable_certificate_files_stop_the_api_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("API_MQTT_CERT_FILE", str(tmp_path / "missing.crt"))
    monkeypatch.setenv("API_MQTT_KEY_FILE", str(tmp_path / "missing.key"))
    monkeypatch.setenv("MQTT_TLS", "true")
    assert main([]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("f2pipe api: API_MQTT_CERT_FILE, API_MQTT_KEY_FILE or MQTT_CA_FILE")
    assert "\n" not in err


def test_a_command_s_status_change_reaches_its_controller_s_stream_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """build() wires the command client's hook to the live stream's hub: a change is one
    `command` frame, in the shape GET /v1/commands/{id} answers with, for that MAC only."""
    monkeypatch.setenv("API_MQTT_CERT_FILE", "/nowhere/api-commands.crt")
    monkeypatch.setenv("API_MQTT_KEY_FILE", "/nowhere/api-commands.key")
    monkeypatch.setenv("MQTT_TLS", "false")
    parts = build(Settings.load(), host="127.0.0.1", port=1).app.state.api
    assert isinstance(parts.commands, MqttCommander)
    hub = parts.stream
    assert hub is not None
    mine, other = hub.subscribe(["aabbccddee01"]), hub.subscribe(["aabbccddee02"])
    assert mine is not None
    assert other is not None
    now = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    row = {
        "id": 7, "mac": "aabbccddee01", "connector": "J1", "component": "strike-1",
        "topic": "cmnd/f2-aabbccddee01/access-control-mode/J1/strike-1",
        "payload": {"power-flag": 2, "period": 5}, "status": "confirmed", "actor": "alice",
        "created_at": now, "deadline": now, "sent_at": now, "finished_at": now,
        "reported_status": True, "reverted_at": None, "detail": None,
    }  # fmt: skip
    assert parts.commands.on_change is not None
    parts.commands.on_change(row)
    chunk, n = mine.take()
    assert n == 1
    event, data = chunk.decode().strip().split("\n")
    assert event == "event: command"
    sent = json.loads(data.removeprefix("data: "))
    assert (sent["mac"], sent["id"], sent["status"]) == ("aabbccddee01", 7, "confirmed")
    assert sent["created_at"] == "2026-12-05T09:00:00Z"
    assert other.take() == (b"", 0)
