"""`f2pipe processor`: settings, topics, then the Faust worker until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
from typing import Any

import faust
from confluent_kafka.admin import AdminClient

from f2pipe_processor.app import create_app
from f2pipe_processor.settings import Settings
from f2pipe_shared.kafka import ensure_topics, pipeline_topics
from f2pipe_shared.logs import configure_logging

log = logging.getLogger(__name__)


class _Worker(faust.Worker):
    """Faust's worker with f2pipe's log lines instead of its colour logger and banner."""

    def __init__(self, app: faust.App, config: Settings, **kwargs: Any) -> None:
        self._f2pipe_common = config.common
        super().__init__(app, quiet=True, redirect_stdouts=False, **kwargs)
        self.spinner = None  # a terminal spinner writes escape codes into log files

    def _setup_logging(self) -> None:
        common = self._f2pipe_common
        configure_logging("processor", common.log_level, common.log_format)
        # Faust and aiokafka explain every rebalance step at INFO: keep them to warnings.
        for noisy in ("faust", "mode", "aiokafka"):
            logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def raw_partitions(config: Settings) -> int:
    """Partitions of the raw topic as it exists (it may predate KAFKA_RAW_PARTITIONS)."""
    admin = AdminClient({"bootstrap.servers": config.kafka.kafka_bootstrap_servers})
    topic = config.kafka.kafka_raw_topic
    metadata = admin.list_topics(topic=topic, timeout=30)
    return len(metadata.topics[topic].partitions)


def main() -> int:
    config = Settings.load()
    common = config.common
    configure_logging("processor", common.log_level, common.log_format)
    ensure_topics(config.kafka, pipeline_topics(config.kafka))
    partitions = raw_partitions(config)
    app, runtime = create_app(config, partitions)
    log.info(
        "processor starting",
        extra={
            "app_id": config.processor.processor_app_id,
            "raw_topic": config.kafka.kafka_raw_topic,
            "partitions": partitions,
            "port": config.port,
        },
    )
    worker = _Worker(app, config, loglevel=common.log_level)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    finally:
        left = runtime.output.close()
        if left:
            log.warning("output left unacknowledged at exit: reprocessed on restart",
                        extra={"records": left})  # fmt: skip
    return code
