"""The simulator against real servers: a seeded registry, certgen, Mosquitto, an operator.

`SimStack` wires them as production does: certgen and the broker share one CA (the `Pki`'s
directories), certgen enrols controllers seeded with claim codes, the broker runs the
production configuration under run-broker.sh. `SimulatorProcess` runs `python -m f2pipe
simulator` as an operator would; `Operator` is the svc-operator identity: it reads
stat/# and tele/# and sends commands.

Also a measurement: `python -m tests.integration.simkit --controllers 1000` starts its own
PostgreSQL and reports enrolment and connection times, resident memory, and the load rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from f2pipe.migrate import apply_migrations
from f2pipe.seed import seed_demo
from f2pipe_devtools.env import mqtt_env, postgres_env, service_env
from f2pipe_devtools.servers import free_port
from tests.integration.certgen_harness import ADMIN_TOKEN, HttpsCertgen, certgen_env, start_https
from tests.integration.tlskit import Pki, SupervisedMosquitto, start_broker

HOST = "127.0.0.1"
# Variables of the developer's shell that would change what the simulator under test does.


@dataclass
class SimStack:
    root: Path
    conninfo: str
    pki: Pki
    certgen: HttpsCertgen
    broker: SupervisedMosquitto
    claim_codes: Path
    controllers: int

    @classmethod
    def start(cls, root: Path, conninfo: str, controllers: int) -> SimStack:
        apply_migrations(conninfo)
        claim_codes = root / "claim-codes.csv"
        seed_demo(conninfo, controllers, claim_codes)
        pki = Pki.create(root / "pki")
        # certgen signs with the Pki's CA (it never replaces an existing one), so the broker
        # trusts the certificates it issues.
        env = certgen_env(
            conninfo,
            Path(pki.settings.ca_dir),
            Path(pki.settings.issued_dir),
            CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN,
            LOG_LEVEL="INFO",
        )
        certgen = start_https(env, root / "certgen.log")
        try:
            broker = start_broker(root / "broker", pki)
        except BaseException:
            certgen.stop()
            raise
        return cls(root, conninfo, pki, certgen, broker, claim_codes, controllers)

    def stop(self) -> None:
        self.broker.stop()
        self.certgen.stop()

    def simulator_env(self, state_dir: Path, metrics_port: int, **extra: str) -> dict[str, str]:
        return service_env(
            postgres_env(self.conninfo),
            mqtt_env(self.broker.port),
            # certgen's certificate is checked against the Pki's CA, as a device's would be.
            {"SIMULATOR_CERTGEN_URL": self.certgen.url,
             "SIMULATOR_CERTGEN_CA_FILE": str(self.pki.ca_file),
             "SIMULATOR_STATE_DIR": str(state_dir),
             "SIMULATOR_CLAIM_CODES": str(self.claim_codes), "METRICS_PORT": str(metrics_port),
             "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"},
            extra,  # a test's own settings win
        )  # fmt: skip


@dataclass
class SimulatorProcess:
    env: dict[str, str]
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_port(self) -> int:
        return int(self.env["METRICS_PORT"])

    def start(self) -> SimulatorProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "f2pipe", "simulator", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def health(self) -> tuple[int, dict[str, Any]]:
        url = f"http://{HOST}:{self.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read())

    def wait_until(
        self, check: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        """Poll /healthz until ``check(details)`` holds; the details then."""
        deadline = time.monotonic() + timeout
        details: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"simulator exited {self.proc.returncode}:\n{self.log()}")
            try:
                _, details = self.health()
                if check(details):
                    return details
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(
            f"simulator: condition not met in {timeout} s ({details}):\n{self.log()}"
        )

    def wait_connected(self, controllers: int, timeout: float = 60) -> dict[str, Any]:
        return self.wait_until(
            lambda d: d.get("phase") == "running" and d.get("connected") == controllers, timeout
        )

    def metrics_text(self) -> str:
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            text: str = response.read().decode()
            return text

    def wait(self, timeout: float = 120) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"simulator did not finish in {timeout} s:\n{self.log()}"
            ) from None

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@dataclass
class Received:
    topic: str
    payload: bytes
    at: float


@dataclass
class Operator:
    """svc-operator: reads stat/# and tele/# (persistent session), sends commands.

    MQTT 3.1.1 with clean_session=False: Mosquitto 2.0.11 restores such a session after a
    restart, but not an MQTT 5 session with a Session Expiry Interval (measured: the CONNACK
    after the restart says no session, and what was queued is gone).
    """

    port: int
    pki: Pki
    client_id: str = "svc-operator"
    messages: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    client: mqtt.Client | None = None
    subscribed: threading.Event = field(default_factory=threading.Event)

    def connect(self) -> Operator:
        identity = self.pki.service("operator")
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=False,
        )
        client.tls_set(str(self.pki.ca_file), str(identity.cert), str(identity.key))
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(1, 2)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.connect(HOST, self.port, keepalive=10)
        client.loop_start()
        self.client = client
        assert self.subscribed.wait(10), "operator: no SUBACK"
        return self

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def command(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def count(self) -> int:
        with self.changed:
            return len(self.messages)

    def since(self, index: int) -> list[Received]:
        with self.changed:
            return self.messages[index:]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 20
    ) -> list[Received]:
        with self.changed:
            self.changed.wait_for(lambda: predicate(self.messages), timeout)
            return list(self.messages)

    def _on_connect(
        self, client: mqtt.Client, _u: object, flags: Any, reason: ReasonCode, _p: object
    ) -> None:
        if not reason.is_failure and not flags.session_present:
            client.subscribe([("stat/#", 1), ("tele/#", 1)])
        elif not reason.is_failure:
            self.subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.messages.append(Received(message.topic, bytes(message.payload), time.monotonic()))
            self.changed.notify_all()


# --- measurement -----------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mosquitto_pid(broker: SupervisedMosquitto) -> int:
    """The mosquitto process under run-broker.sh."""
    assert broker.pid is not None
    with open(f"/proc/{broker.pid}/task/{broker.pid}/children", encoding="ascii") as children:
        for pid in children.read().split():
            with open(f"/proc/{pid}/comm", encoding="ascii") as comm:
                if comm.read().strip() == "mosquitto":
                    return int(pid)
    raise RuntimeError("mosquitto not found under run-broker.sh")


def _load_run(
    stack: SimStack, env: dict[str, str], count: int, rate: float | None, name: str
) -> dict[str, Any]:
    ledger = stack.root / f"{name}.jsonl"
    args = ["--load", "--count", str(count), "--seed", "1", "--ledger", str(ledger)]
    if rate is not None:
        args += ["--rate", str(rate)]
    broker = mosquitto_pid(stack.broker)
    broker_cpu = cpu_seconds(broker)
    sim = SimulatorProcess(env, args, stack.root / f"{name}.log").start()
    assert sim.proc is not None
    peak = cpu = 0.0
    while sim.proc.poll() is None:
        try:
            peak = max(peak, rss_mb(sim.proc.pid))
            cpu = cpu_seconds(sim.proc.pid)
        except (OSError, IndexError):
            pass
        time.sleep(0.2)
    summary = json.loads(ledger.read_text().splitlines()[-1])
    seconds = summary["load_seconds"]
    return {
        "start_to_all_connected_s": _log_span(
            sim.log_path, "simulator started", "every controller connected"
        ),
        "exit": sim.proc.returncode,
        "messages": summary["messages"],
        "unacknowledged": summary["unacknowledged"],
        "msg_per_s": summary["load_rate"],
        "readings": summary["readings"],
        "peak_rss_mb": round(peak, 1),
        "simulator_cpu_s": round(cpu, 1),
        "mosquitto_cpu_s": round(cpu_seconds(broker) - broker_cpu, 1),
        "load_seconds": seconds,
    }


def _log_span(path: Path, first: str, last: str) -> float | None:
    """Seconds between two JSON log lines, by their messages."""
    stamps: dict[str, datetime] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") in (first, last):
            stamps[record["msg"]] = datetime.fromisoformat(record["ts"])
    if len(stamps) < 2:
        return None
    return round((stamps[last] - stamps[first]).total_seconds(), 1)


def measure(controllers: int, count: int, rate: float | None) -> dict[str, Any]:
    """Enrol, connect and load-test ``controllers`` against real servers; return the numbers."""
    from f2pipe_devtools.servers import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="f2pipe-simkit-"))
    root.chmod(0o755)
    results: dict[str, Any] = {"controllers": controllers}
    try:
        with PostgresServer(root / "postgres") as postgres:
            stack = SimStack.start(root, postgres.create_database("simkit"), controllers)
            try:
                env = stack.simulator_env(root / "state", free_port(), PUBLISH_INTERVAL="30")
                results["normal"] = _normal_run(env, root, controllers)
                results["load_unlimited"] = _load_run(stack, env, count, None, "load")
                if rate is not None:
                    results["load_fixed_rate"] = _load_run(stack, env, count, rate, "rate")
            finally:
                stack.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def _normal_run(env: dict[str, str], root: Path, controllers: int) -> dict[str, Any]:
    started = time.monotonic()
    sim = SimulatorProcess(env, [], root / "normal.log").start()
    assert sim.proc is not None
    sim.wait_until(lambda d: d.get("phase") in ("connecting", "running"), 900)
    enrolled = time.monotonic() - started
    sim.wait_connected(controllers, 900)
    connected = time.monotonic() - started
    cpu, messages = cpu_seconds(sim.proc.pid), sim.health()[1]["messages"]
    time.sleep(60)  # two publish intervals: every sensor has sent twice
    cpu, messages = cpu_seconds(sim.proc.pid) - cpu, sim.health()[1]["messages"] - messages
    result = {
        "start_to_enrolled_s": round(enrolled, 1),
        "start_to_all_connected_s": round(connected, 1),
        "rss_mb": round(rss_mb(sim.proc.pid), 1),
        "msg_per_s": round(messages / 60, 1),
        "cpu_percent": round(100 * cpu / 60, 1),
    }
    assert sim.terminate() == 0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--controllers", type=int, default=1000)
    parser.add_argument("--count", type=int, default=200_000, help="messages per load run")
    parser.add_argument("--rate", type=float, help="also a load run at this fixed rate")
    args = parser.parse_args()
    print(json.dumps(measure(args.controllers, args.count, args.rate), indent=2))


if __name__ == "__main__":
    main()
