"""f2pipe sink: the batched, idempotent Kafka -> TimescaleDB writer."""
