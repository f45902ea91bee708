"""`f2pipe processor`: every setting comes from the environment (docs/configuration.md).

``build`` is the one place that constructs the processor's real adapters (registry database,
Redis, Kafka output, registry listener, the Faust app) and hands them to ``ProcessorService``;
``main`` loads the settings, creates the topics, builds, and runs Faust's worker until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from f2pipe_processor import faust_adapter
from f2pipe_processor.acks import Commits, Holes, InFlight
from f2pipe_processor.connectivity import Connectivity
from f2pipe_processor.core import BatchProcessor
from f2pipe_processor.invalidation import RegistryListener
from f2pipe_processor.latest import LatestTable
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.output import KafkaOutput
from f2pipe_processor.registry import Registry
from f2pipe_processor.resolver import RedisCache, Resolver
from f2pipe_processor.service import ProcessorService
from f2pipe_processor.settings import Settings
from f2pipe_shared.kafka import TopicWatch, list_topics, pipeline_topics, verify_topics
from f2pipe_shared.logs import configure_logging

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="f2pipe processor",
        description="Faust worker: raw-iot-data -> processed-iot-data and dead letters",
    )


@dataclass(frozen=True)
class Processor:
    """What ``build`` made: the service, the Faust app driving it, and what main closes."""

    service: ProcessorService
    app: faust_adapter.ProcessorApp
    output: KafkaOutput
    metrics: ProcessorMetrics
    partitions: int


def build(settings: Settings, partitions: int | None = None) -> Processor:
    """The processor for ``partitions`` raw partitions (default: the raw topic's, from Kafka)."""
    if partitions is None:
        partitions = raw_partitions(settings)
    kafka, config = settings.kafka, settings.processor
    retry_max = config.processor_postgres_retry_max_seconds
    metrics = ProcessorMetrics()
    registry = Registry(settings.postgres.conninfo, retry_max_seconds=retry_max, metrics=metrics)
    cache = RedisCache(
        settings.redis.url,
        credentials=settings.redis.credentials,
        prefix=config.processor_redis_prefix,
        ttl_seconds=config.processor_cache_ttl_seconds,
        retry_seconds=config.processor_redis_retry_seconds,
        timeout=config.processor_redis_timeout_seconds,
        metrics=metrics,
    )
    resolver = Resolver(registry, cache, config.processor_local_cache_size, metrics=metrics)
    core = BatchProcessor(
        resolver,
        source_topic=kafka.kafka_raw_topic,
        max_future_seconds=config.processor_max_future_seconds,
        max_age_seconds=config.max_age(settings.telemetry.telemetry_retention).total_seconds(),
        metrics=metrics,
        clock=time.time,
    )
    output = KafkaOutput(kafka, metrics)
    app = faust_adapter.create_app(settings, partitions)
    table = faust_adapter.latest_table(app, partitions)
    states = faust_adapter.connectivity_table(app, partitions)
    service = ProcessorService(
        kafka=kafka,
        core=core,
        output=output,
        latest=LatestTable(faust_adapter.FaustTableBackend(table)),
        inflight=InFlight(config.processor_max_inflight, metrics),
        holes=Holes(frozenset({kafka.kafka_raw_topic}), metrics),
        commits=Commits(metrics, time.monotonic),
        listener=RegistryListener(settings.postgres.conninfo, resolver, retry_max),
        resolver=resolver,
        registry=registry,
        cache=cache,
        metrics=metrics,
        connectivity=Connectivity(
            faust_adapter.FaustStateBackend(states), settings.connectivity_timeout, metrics
        ),
        progress=faust_adapter.FaustProgress(app, kafka.kafka_raw_topic),
        redis_probe_seconds=config.processor_redis_probe_seconds,
        clock=time.time,
    )
    faust_adapter.serve(app, service, table=table, metrics=metrics, settings=settings)
    return Processor(service, app, output, metrics, partitions)


def raw_partitions(settings: Settings) -> int:
    """Partitions of the raw topic as it exists (it may predate KAFKA_RAW_PARTITIONS)."""
    topic = settings.kafka.kafka_raw_topic
    metadata = list_topics(settings.kafka)
    return len(metadata.topics[topic].partitions)


def changelog_topics(app: Any) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """The tables' changelog topics and Faust's leader topic (name -> partitions, name ->
    configuration), for the topic watch to create them again as Faust declared them, should
    the broker lose them (no client creates a topic by naming it: faust_adapter)."""
    partitions: dict[str, int] = {faust_adapter.leader_topic(app): 1}
    configs: dict[str, dict[str, str]] = {}
    for table in app.tables.values():
        name = table.changelog_topic.get_topic_name()
        partitions[name] = table.partitions
        configs[name] = {"cleanup.policy": "compact", **table.extra_topic_configs}
    return partitions, configs


def main(argv: Sequence[str] | None = None) -> int:
    parser().parse_args(argv)
    settings = Settings.load()
    common = settings.common
    configure_logging("processor", common.log_level, common.log_format)
    kafka = settings.kafka
    # The raw topic's partitions size the latest-value and connectivity tables (Faust refuses
    # a table whose changelog does not match), and processed records are produced to
    # partitions by number: another count than configured stops start-up.
    strict = {kafka.kafka_raw_topic, kafka.kafka_processed_topic}
    verify_topics(kafka, pipeline_topics(kafka), strict=strict)
    processor = build(settings)
    changelogs, configs = changelog_topics(processor.app)
    watch = TopicWatch(
        kafka, {**pipeline_topics(kafka), **changelogs}, processor.metrics, configs=configs
    ).start()
    processor.output.follow(watch)
    log.info(
        "processor starting",
        extra={
            "app_id": settings.processor.processor_app_id,
            "raw_topic": settings.kafka.kafka_raw_topic,
            "partitions": processor.partitions,
            "port": settings.port,
        },
    )
    try:
        return faust_adapter.run_worker(processor.app, common)
    finally:
        watch.stop()
        left = processor.output.close()
        if left:
            log.warning("output left unacknowledged at exit: reprocessed on restart",
                        extra={"records": left})  # fmt: skip
