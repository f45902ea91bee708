"""Helpers for the bridge tests: run the bridge as a real process, publish, read Kafka."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import Consumer, TopicPartition
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from f2pipe_devtools.env import kafka_env, mqtt_env, service_env
from f2pipe_devtools.servers import free_port
from f2pipe_shared.deadletters import DeadLetter
from f2pipe_shared.records import RawMessage, decode_raw_batch
from f2pipe_shared.settings import KafkaSettings


@dataclass
class Topics:
    raw: str
    processed: str
    dlq: str

    @classmethod
    def unique(cls) -> Topics:
        tag = uuid.uuid4().hex[:8]
        return cls(f"raw-{tag}", f"processed-{tag}", f"dlq-{tag}")

    def kafka_settings(self, bootstrap: str, **partitions: Any) -> KafkaSettings:
        """Settings naming these topics (it creates none); `partitions`: kafka_*_partitions."""
        return KafkaSettings(
            kafka_bootstrap_servers=bootstrap,
            kafka_raw_topic=self.raw,
            kafka_processed_topic=self.processed,
            kafka_deadletter_topic=self.dlq,
            **partitions,
        )


@dataclass
class BridgeProcess:
    env: dict[str, str]
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_healthy: bool = True, args: Sequence[str] = ()) -> BridgeProcess:
        env = {**self.env, "METRICS_PORT": str(self.metrics_port)}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "f2pipe", "bridge", *args], env=env, stdout=log, stderr=log
        )
        if wait_healthy:
            self.wait_healthy()
        return self

    def health(self) -> tuple[int, dict[str, object]]:
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.health()[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"bridge not healthy after {timeout}s:\n{self.log()}")

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise KeyError(name)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 40) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def bridge_env(
    mqtt_port: int, kafka: str, topics: Topics, client_id: str, **extra: str
) -> dict[str, str]:
    return service_env(
        mqtt_env(mqtt_port, tls=False),
        kafka_env(
            kafka,
            raw=topics.raw,
            processed=topics.processed,
            dead_letters=topics.dlq,
            fast_groups=False,
        ),
        {"KAFKA_RAW_PARTITIONS": "3", "BRIDGE_CLIENT_ID": client_id,
         "BRIDGE_BATCH_LINGER_MS": "20", "LOG_FORMAT": "text"},
        extra,  # a test's own settings win
    )  # fmt: skip


class Publisher:
    """A QoS 1 publisher that waits until the broker has every message."""

    def __init__(
        self, port: int, client_id: str = "test-publisher", tls: tuple[str, str, str] | None = None
    ) -> None:
        """`tls`: (CA file, certificate file, key file) for a mutual-TLS broker."""
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if tls:
            self.client.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2])
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.pending: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.pending.append(self.client.publish(topic, payload, qos=1))

    def wait(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for info in self.pending:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "broker did not acknowledge a publish"
        self.pending.clear()

    def close(self) -> None:
        self.wait()
        # Disconnect first: the network thread then ends at once (the other way round,
        # loop_stop waits out its 1 s select).
        self.client.disconnect()
        self.client.loop_stop()


def session_present(
    port: int, client_id: str, timeout: float = 10, tls: tuple[str, str, str] | None = None
) -> bool:
    """Whether the broker holds a persistent session for `client_id` (under mutual TLS,
    `tls` = CA, certificate, key: the certificate's CN is the client id); a session found is
    resumed and kept as it was (this client subscribes to nothing, acknowledges nothing)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    if tls:
        client.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2])
    found: list[bool] = []
    client.on_connect = lambda _c, _u, flags, _r, _p: found.append(flags.session_present)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600  # what the bridge asks: the session stays
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    deadline = time.monotonic() + timeout
    while not found and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    assert found, f"no CONNACK for {client_id} in {timeout}s"
    return found[0]


def read_topic(
    bootstrap: str,
    topic: str,
    partitions: Iterable[int],
    idle: float = 3.0,
    until: int | None = None,
    timeout: float = 90,
) -> list[tuple[int, bytes, list[tuple[str, bytes]]]]:
    """Every record of a topic (partition, value, headers), read until `until` records or
    nothing new for `idle` seconds. Counting by reading: Tansu's watermarks are wrong."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records: list[tuple[int, bytes, list[tuple[str, bytes]]]] = []
    last_new, start = time.monotonic(), time.monotonic()
    try:
        while time.monotonic() - last_new < idle and time.monotonic() - start < timeout:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            raw = msg.headers() or []
            pairs = raw.items() if isinstance(raw, dict) else raw
            headers = [(k, v if isinstance(v, bytes) else b"") for k, v in pairs]
            records.append((msg.partition() or 0, msg.value() or b"", headers))
            last_new = time.monotonic()
            if until is not None and len(records) >= until:
                break
    finally:
        consumer.close()
    return records


def raw_messages(
    bootstrap: str, topic: str, partitions: int = 3, idle: float = 3.0
) -> list[tuple[int, RawMessage]]:
    return [
        (partition, message)
        for partition, value, _ in read_topic(bootstrap, topic, range(partitions), idle=idle)
        for message in decode_raw_batch(value)
    ]


def dead_letters(
    bootstrap: str, topic: str, partitions: int = 6, idle: float = 3.0
) -> list[DeadLetter]:
    return [
        DeadLetter.from_kafka(value, headers)
        for _, value, headers in read_topic(bootstrap, topic, range(partitions), idle=idle)
    ]


def wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
