"""The bridge's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter("f2pipe_bridge_received", "MQTT messages received")
PRODUCED = Counter("f2pipe_bridge_produced_messages", "MQTT messages confirmed written to Kafka")
BATCHES = Counter("f2pipe_bridge_produced_batches", "raw-iot-data records confirmed by Kafka")
ACKED = Counter("f2pipe_bridge_acknowledged", "MQTT messages acknowledged to the broker")
NOT_ACKED = Counter(
    "f2pipe_bridge_ack_skipped",
    "Kafka-confirmed messages not acknowledged because the MQTT connection changed since "
    "(the broker redelivers them: duplicates in Kafka, never loss)",
)
DEAD_LETTERS = Counter("f2pipe_bridge_dead_letters", "messages dead-lettered", ["reason"])
IN_FLIGHT = Gauge("f2pipe_bridge_in_flight", "messages received and not yet acknowledged")
KAFKA_ERRORS = Counter("f2pipe_bridge_kafka_errors", "Kafka delivery or client errors", ["code"])
CONNECTED = Gauge("f2pipe_bridge_mqtt_connected", "1 while connected to the broker")
CONNECTS = Counter("f2pipe_bridge_mqtt_connects", "successful MQTT connections")
DELIVERY_LATENCY = Histogram(
    "f2pipe_bridge_delivery_latency_seconds",
    "from MQTT receive to Kafka confirmation",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SIZE = Histogram(
    "f2pipe_bridge_batch_messages",
    "MQTT messages per raw-iot-data record",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
