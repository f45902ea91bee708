"""`f2pipe bridge`: MQTT (stat/#, tele/#) -> Kafka raw-iot-data, losing nothing.

Flow: paho (persistent MQTT 5 session, manual acknowledgements) -> per-partition batches
(`batcher.py`) -> idempotent confluent-kafka producer -> acknowledgement to the broker after
Kafka confirmed (`bridge.py`). Bad topics and oversize payloads go to the dead-letter topic.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException, Producer

from f2pipe_bridge.bridge import Bridge
from f2pipe_bridge.mqtt import MqttSide
from f2pipe_bridge.settings import Settings
from f2pipe_shared import settings as s
from f2pipe_shared.kafka import ensure_topics, pipeline_topics, producer_config
from f2pipe_shared.logs import configure_logging
from f2pipe_shared.observability import ObservabilityServer, on_shutdown_signal

log = logging.getLogger("f2pipe.bridge")



def main() -> int:
    settings = Settings.load()
    configure_logging("bridge", settings.common.log_level, settings.common.log_format)

    kafka = settings.kafka
    wait_for_topics(kafka)
    producer = Producer(producer_config(kafka))
    mqtt_side = MqttSide(settings.mqtt, settings.bridge)
    bridge = Bridge(kafka, settings.bridge, mqtt_side, producer)
    server = ObservabilityServer(
        settings.observability.metrics_host, settings.metrics_port, bridge.health
    ).start()
    on_shutdown_signal(bridge.stop)
    log.info("bridge started", extra={"metrics_port": server.port, "topics": mqtt_side.topics()})
    try:
        bridge.run()
    finally:
        server.stop()
    return 0


def wait_for_topics(kafka: s.KafkaSettings) -> None:
    """Create the pipeline's topics, waiting for Kafka if it is not up yet."""
    delay = 1.0
    while True:
        try:
            ensure_topics(kafka, pipeline_topics(kafka), timeout=10)
            return
        except KafkaException as exc:
            log.warning("Kafka not reachable yet", extra={"error": str(exc), "retry_in_s": delay})
            time.sleep(delay)
            delay = min(delay * 2, 30)
