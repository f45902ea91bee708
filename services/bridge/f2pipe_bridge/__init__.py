"""f2pipe bridge: MQTT -> Kafka raw-iot-data without losing a message."""
