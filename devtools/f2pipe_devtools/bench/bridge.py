"""The bridge next to its ceiling: a bare paho subscriber draining the same broker.

Both drain a backlog queued for their persistent session while they were away, so the
publisher's speed does not enter the figure: what is measured is MQTT in -> (Kafka confirmed
and acknowledged) for the bridge, and MQTT in -> counted for the bare subscriber.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

from f2pipe_devtools.bench.report import Measurement, Report
from f2pipe_devtools.servers import KafkaBroker, MosquittoServer, free_port

BROKER_CONFIG = """listener {port} {host}
allow_anonymous true
max_queued_messages 2000000
max_inflight_messages 5000
"""

# A bare subscriber as fast as paho goes: QoS 1, automatic acknowledgements, count only.
BARE_SUBSCRIBER = r"""
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, total, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
done = threading.Event(); state = {"n": 0, "t0": None}
def on_message(c, u, m):
    if state["t0"] is None: state["t0"] = time.perf_counter()
    state["n"] += 1
    if state["n"] >= total: done.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
c.on_message = on_message
p = Properties(PacketTypes.CONNECT); p.SessionExpiryInterval = 3600; p.ReceiveMaximum = 5000
c.connect("127.0.0.1", port, clean_start=False, properties=p)
if mode == "subscribe":
    c.subscribe([("stat/#", 1), ("tele/#", 1)]); c.loop(1); c.loop(1); c.disconnect(); sys.exit(0)
c.loop_start(); done.wait(600)
print(state["n"] / (time.perf_counter() - state["t0"]))
c.disconnect()
"""


def publish_backlog(port: int, total: int) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(2000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = json.dumps(
        {"timestamp": "2026-11-24 10:00:00.000000", "data": "01 03 06 09 29 11 D7 02 64 4B 1E"}
    ).encode()
    # MQTT packet ids are 16-bit: more than 65,535 outstanding QoS 1 messages would collide.
    for start in range(0, total, 20_000):
        infos = [
            client.publish(
                f"tele/f2-aabbccdd{i % 1000:04x}/sensor-mode/J3/sensor-{i % 6 + 1}", payload, qos=1
            )
            for i in range(start, min(total, start + 20_000))
        ]
        for info in infos:
            info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def bare_rate(port: int, total: int) -> float:
    run = [sys.executable, "-c", BARE_SUBSCRIBER, str(port), str(total)]
    subprocess.run([*run, "subscribe"], check=True, timeout=30)
    publish_backlog(port, total)
    out = subprocess.run([*run, "drain"], check=True, timeout=600, capture_output=True, text=True)
    return float(out.stdout.strip())


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def bridge_rate(mqtt_port: int, kafka: str, total: int, workdir: Path, run: int) -> float:
    metrics_port = free_port()
    env = {
        **os.environ,
        "MQTT_BROKER_HOST": "127.0.0.1",
        "MQTT_BROKER_PORT": str(mqtt_port),
        "MQTT_TLS": "false",
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "KAFKA_RAW_TOPIC": f"raw-{run}",
        "KAFKA_PROCESSED_TOPIC": f"processed-{run}",
        "KAFKA_DEADLETTER_TOPIC": f"dlq-{run}",
        "BRIDGE_CLIENT_ID": f"bench-bridge-{run}",
        "METRICS_PORT": str(metrics_port),
        "LOG_LEVEL": "WARNING",
    }
    log = (workdir / f"bridge-{run}.log").open("ab")
    cmd = [sys.executable, "-m", "f2pipe", "bridge"]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=1):
                    return proc
            except OSError:
                time.sleep(0.1)
        proc.kill()
        raise RuntimeError(f"bridge did not become healthy; see {log.name}")

    first = start()  # creates the persistent session and the topics
    first.terminate()
    first.wait(60)
    publish_backlog(mqtt_port, total)
    proc = start()
    try:
        t0 = None
        while True:
            received = metric(metrics_port, "f2pipe_bridge_received_total")
            if t0 is None and received > 0:
                t0 = time.perf_counter()
            if metric(metrics_port, "f2pipe_bridge_acknowledged_total") >= total:
                assert t0 is not None
                return total / (time.perf_counter() - t0)
            # Each scrape costs the bridge ~2 ms of its GIL (process collector, exposition):
            # every 50 ms that was 4 % of what it is measured on.
            time.sleep(0.05 if t0 is None else 0.1)
    finally:
        proc.terminate()
        proc.wait(60)


def run(report: Report, repeats: int, min_seconds: float) -> None:
    total = 20_000 if min_seconds < 0.1 else 100_000
    workdir = Path(tempfile.mkdtemp(prefix="f2pipe-bench-bridge-"))
    with (
        MosquittoServer(workdir / "mqtt", config=BROKER_CONFIG) as broker,
        KafkaBroker(workdir / "kafka") as kafka,
    ):
        bare, bridge = [], []
        for i in range(repeats):
            bare.append(bare_rate(broker.port, total))
            bridge.append(bridge_rate(broker.port, kafka.bootstrap_servers, total, workdir, i))
    report.add(
        Measurement(
            "bare paho subscriber (ceiling)",
            "messages/s",
            bare,
            f"{total:,} queued messages, QoS 1",
        )
    )
    ratio = [b / c for b, c in zip(bridge, bare, strict=True)]
    report.add(
        Measurement(
            "bridge: MQTT in -> Kafka confirmed -> acked",
            "messages/s",
            bridge,
            f"{total:,} queued messages",
        )
    )
    report.add(Measurement("bridge / bare subscriber", "ratio", ratio, "same run, pairwise"))
