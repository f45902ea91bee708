"""The bridge's Prometheus metrics, in a registry of their own (two bridges in one test
process never share counters). `/metrics` serves them with the process and Python collectors.

Dashboards and alerts use these names and labels (deploy/prometheus, deploy/grafana).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from f2pipe_shared.metrics import ServiceMetrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000)


class BridgeMetrics(ServiceMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("f2pipe_bridge_", registry)
        # Counted by the MQTT side.
        self.received = self.counter("received", "MQTT messages received")
        self.acked = self.counter("acknowledged", "MQTT messages acknowledged to the broker")
        self.not_acked = self.counter(
            "ack_skipped",
            "Kafka-confirmed messages not acknowledged because the MQTT connection changed since "
            "(the broker redelivers them: duplicates in Kafka, never loss)",
        )
        self.connected = self.gauge("mqtt_connected", "1 while connected to the broker")
        self.connects = self.counter("mqtt_connects", "successful MQTT connections")
        # Counted by the service and its outbox.
        self.produced = self.counter(
            "produced_messages", "MQTT messages confirmed written to Kafka"
        )
        self.batches = self.counter("produced_batches", "raw-iot-data records confirmed by Kafka")
        self.dead_letters = self.counter("dead_letters", "messages dead-lettered", ["reason"])
        self.in_flight = self.gauge("in_flight", "messages received and not yet acknowledged")
        self.kafka_errors = self.counter(
            "kafka_errors", "Kafka delivery or client errors", ["code"]
        )
        self.delivery_latency = self.histogram(
            "delivery_latency_seconds",
            "per raw-iot-data record: from its first message's MQTT receive to Kafka confirmation",
            LATENCY_BUCKETS,
        )
        self.batch_size = self.histogram(
            "batch_messages", "MQTT messages per raw-iot-data record", BATCH_BUCKETS
        )
