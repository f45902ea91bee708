"""The bridge's Prometheus metrics, in a registry of their own (two bridges in one test
process never share counters). `/metrics` serves them with the process and Python collectors.

Dashboards and alerts use these names and labels (deploy/prometheus, deploy/grafana).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # Counted by the MQTT side.
        self.received = Counter("f2pipe_bridge_received", "MQTT messages received", registry=r)
        self.acked = Counter(
            "f2pipe_bridge_acknowledged", "MQTT messages acknowledged to the broker", registry=r
        )
        self.not_acked = Counter(
            "f2pipe_bridge_ack_skipped",
            "Kafka-confirmed messages not acknowledged because the MQTT connection changed since "
            "(the broker redelivers them: duplicates in Kafka, never loss)",
            registry=r,
        )
        self.connected = Gauge(
            "f2pipe_bridge_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.connects = Counter(
            "f2pipe_bridge_mqtt_connects", "successful MQTT connections", registry=r
        )
        # Counted by the service and its outbox.
        self.produced = Counter(
            "f2pipe_bridge_produced_messages",
            "MQTT messages confirmed written to Kafka",
            registry=r,
        )
        self.batches = Counter(
            "f2pipe_bridge_produced_batches", "raw-iot-data records confirmed by Kafka", registry=r
        )
        self.dead_letters = Counter(
            "f2pipe_bridge_dead_letters", "messages dead-lettered", ["reason"], registry=r
        )
        self.in_flight = Gauge(
            "f2pipe_bridge_in_flight", "messages received and not yet acknowledged", registry=r
        )
        self.kafka_errors = Counter(
            "f2pipe_bridge_kafka_errors", "Kafka delivery or client errors", ["code"], registry=r
        )
        self.delivery_latency = Histogram(
            "f2pipe_bridge_delivery_latency_seconds",
            "from MQTT receive to Kafka confirmation",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.batch_size = Histogram(
            "f2pipe_bridge_batch_messages",
            "MQTT messages per raw-iot-data record",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
