"""`f2pipe bridge --workers N`: each worker's identity and port, and the supervisor's rules
(a dead worker started again after a growing pause, a refused one stops all, SIGTERM stops all).
The real processes against a real broker: tests/integration/test_scale_out.py."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from f2pipe_bridge import workers
from f2pipe_bridge.main import leaving_settings, main
from f2pipe_bridge.settings import BridgeSettings, Settings
from f2pipe_bridge.workers import Supervisor, numbered, worker_settings
from f2pipe_shared.settings import (
    CommonSettings,
    KafkaSettings,
    MqttSettings,
    ObservabilitySettings,
    SettingsError,
)


def settings(tmp_path: Path, *, group: str | None = "f2pipe", port: int | None = 9300,
             files: int = 3) -> Settings:  # fmt: skip
    for n in range(1, files + 1):
        for ext in ("crt", "key"):
            Path(numbered(str(tmp_path / f"bridge.{ext}"), n)).write_text("x")
    bridge = BridgeSettings(
        bridge_shared_group=group,
        bridge_cert_file=str(tmp_path / "bridge.crt"),
        bridge_key_file=str(tmp_path / "bridge.key"),
    )
    return Settings(CommonSettings(), ObservabilitySettings(metrics_port=port), KafkaSettings(),
                    MqttSettings(), bridge)  # fmt: skip


def test_numbered_keeps_the_first_and_numbers_the_others() -> None:
    assert numbered("issued/bridge.crt", 1) == "issued/bridge.crt"
    assert numbered("issued/bridge.crt", 2) == "issued/bridge-2.crt"
    assert numbered("/run/secrets/bridge", 3) == "/run/secrets/bridge-3"


def test_each_worker_gets_its_identity_client_id_and_port(tmp_path: Path) -> None:
    plans = worker_settings(settings(tmp_path), 3)
    assert [p["BRIDGE_CERT_FILE"] for p in plans] == [
        str(tmp_path / "bridge.crt"), str(tmp_path / "bridge-2.crt"), str(tmp_path / "bridge-3.crt")
    ]  # fmt: skip
    assert [Path(p["BRIDGE_KEY_FILE"]).name for p in plans] == [
        "bridge.key", "bridge-2.key", "bridge-3.key"
    ]  # fmt: skip
    assert [p["BRIDGE_CLIENT_ID"] for p in plans] == [
        "f2pipe-bridge", "f2pipe-bridge-2", "f2pipe-bridge-3"
    ]  # fmt: skip
    assert [p["METRICS_PORT"] for p in plans] == ["9300", "9301", "9302"]


def test_port_zero_gives_every_worker_a_free_port_of_its_own(tmp_path: Path) -> None:
    assert {p["METRICS_PORT"] for p in worker_settings(settings(tmp_path, port=0), 2)} == {"0"}


def test_without_a_shared_group_workers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BRIDGE_SHARED_GROUP"):
        worker_settings(settings(tmp_path, group=None), 2)
    assert len(worker_settings(settings(tmp_path, group=None), 1)) == 1  # one needs no group


def test_a_missing_certificate_or_key_is_named(tmp_path: Path) -> None:
    given = settings(tmp_path, files=2)
    with pytest.raises(ValueError, match=r"bridge-3\.crt, .*bridge-3\.key"):
        worker_settings(given, 3)


@pytest.mark.parametrize("count", [0, -1, workers.MAX_WORKERS + 1])
def test_worker_count_is_bounded(tmp_path: Path, count: int) -> None:
    with pytest.raises(ValueError, match="--workers"):
        worker_settings(settings(tmp_path), count)


def test_main_refuses_workers_without_a_group_as_a_settings_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BRIDGE_SHARED_GROUP", raising=False)
    with pytest.raises(SettingsError, match="BRIDGE_SHARED_GROUP"):
        main(["--workers", "2"])


def test_leave_takes_the_identity_and_port_of_the_worker_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("BRIDGE_CERT_FILE", "BRIDGE_KEY_FILE", "BRIDGE_CLIENT_ID", "METRICS_PORT"):
        # Set, then unset: the undo then removes what leaving_settings writes there.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    third = leaving_settings(settings(tmp_path), 3)
    assert third.bridge.bridge_cert_file == str(tmp_path / "bridge-3.crt")
    assert third.bridge.bridge_key_file == str(tmp_path / "bridge-3.key")
    assert third.bridge.bridge_client_id == "f2pipe-bridge-3"
    assert third.metrics_port == 9302


@pytest.mark.parametrize("number", [0, 17])
def test_leave_names_a_worker_that_can_exist(tmp_path: Path, number: int) -> None:
    with pytest.raises(SettingsError, match=r"--leave must be 1\.\.16"):
        leaving_settings(settings(tmp_path), number)


def test_leave_and_workers_together_are_refused() -> None:
    with pytest.raises(SettingsError, match="without --workers"):
        main(["--workers", "2", "--leave", "2"])


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None
        self.signals: list[int] = []
        self.hangs = False  # ignores SIGTERM
        self.killed = False

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if not self.hangs:
            self.code = 0

    def wait(self, timeout: float | None = None) -> int:
        if self.code is None:
            raise subprocess.TimeoutExpired("bridge", timeout or 0)
        return self.code

    def kill(self) -> None:
        self.killed = True
        self.code = -9


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def supervised(n: int) -> tuple[Supervisor, list[tuple[int, FakeProc]], Clock]:
    spawned: list[tuple[int, FakeProc]] = []
    clock = Clock()

    def spawn(overrides: Mapping[str, str]) -> FakeProc:
        proc = FakeProc(1000 + len(spawned))
        spawned.append((int(overrides["METRICS_PORT"]), proc))
        return proc

    plans = [{"METRICS_PORT": str(9100 + i)} for i in range(n)]
    return Supervisor(plans, spawn=spawn, clock=clock), spawned, clock


def test_a_dead_worker_is_started_again_after_a_pause_that_grows_while_it_dies_young() -> None:
    supervisor, spawned, clock = supervised(2)
    supervisor.start()
    assert [port for port, _ in spawned] == [9100, 9101]
    spawned[1][1].code = -9  # kill -9 of worker 2
    supervisor.check()
    assert len(spawned) == 2  # not at once
    clock.now += 0.9
    supervisor.check()
    assert len(spawned) == 2
    clock.now += 0.2
    supervisor.check()
    assert [port for port, _ in spawned] == [9100, 9101, 9101]  # the same worker, again
    spawned[2][1].code = 1  # dies young: twice the pause
    supervisor.check()
    clock.now += 1.5
    supervisor.check()
    assert len(spawned) == 3
    clock.now += 0.6
    supervisor.check()
    assert len(spawned) == 4
    clock.now += workers.HEALTHY_AFTER + 1  # ran long enough: the next pause is the first again
    spawned[3][1].code = 1
    supervisor.check()
    clock.now += workers.FIRST_PAUSE
    supervisor.check()
    assert len(spawned) == 5
    assert spawned[0][1].signals == []  # worker 1 untouched throughout


def test_the_pause_stops_growing_at_its_cap() -> None:
    supervisor, spawned, clock = supervised(1)
    supervisor.start()
    for _ in range(12):
        spawned[-1][1].code = 1
        supervisor.check()
        clock.now += workers.MAX_PAUSE
        supervisor.check()
    assert len(spawned) == 13
    assert supervisor.workers[0].pause == workers.MAX_PAUSE


def test_a_worker_that_refuses_its_settings_stops_them_all() -> None:
    supervisor, spawned, _ = supervised(2)
    supervisor.start()
    spawned[1][1].code = workers.USAGE_ERROR
    supervisor.check()
    assert supervisor.supervise(tick=0) == workers.USAGE_ERROR
    assert spawned[0][1].signals == [signal.SIGTERM]
    assert len(spawned) == 2  # not started again


def test_stop_terminates_the_running_and_kills_one_that_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    supervisor, spawned, _ = supervised(3)
    supervisor.start()
    spawned[1][1].hangs = True
    spawned[2][1].code = 1  # dead, waiting for its pause: nothing to stop, not restarted
    supervisor.check()
    monkeypatch.setattr(workers, "STOP_TIMEOUT", 0.0)
    supervisor.stop()
    assert supervisor.supervise(tick=0) == 0
    assert spawned[0][1].signals == [signal.SIGTERM]
    assert not spawned[0][1].killed
    assert spawned[1][1].signals == [signal.SIGTERM]
    assert spawned[1][1].killed
    assert spawned[2][1].signals == []
    assert len(spawned) == 3
