"""`f2pipe bridge`: every setting comes from the environment (docs/configuration.md).

`build` is the one place that constructs the real adapters (paho's side, confluent-kafka's
producer); `main` wires the process around the service: settings, logging, topics,
`/metrics` + `/healthz`, SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence

from confluent_kafka import KafkaException, Producer

from f2pipe_bridge.metrics import BridgeMetrics
from f2pipe_bridge.mqtt import MqttSide, wanted_filters
from f2pipe_bridge.ports import MessageSource, RecordProducer, TopicStatus
from f2pipe_bridge.service import BridgeService
from f2pipe_bridge.settings import Settings
from f2pipe_bridge.workers import MAX_WORKERS, Supervisor, worker_plan, worker_settings
from f2pipe_shared.kafka import TopicWatch, pipeline_topics, producer_config, verify_topics
from f2pipe_shared.lifecycle import serve
from f2pipe_shared.logs import configure_logging
from f2pipe_shared.observability import on_shutdown_signal
from f2pipe_shared.settings import KafkaSettings, SettingsError

log = logging.getLogger("f2pipe.bridge")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="f2pipe bridge",
        description=(
            "MQTT stat/# and tele/# -> Kafka raw-iot-data, acknowledged after Kafka confirmed"
        ),
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N bridge processes in the BRIDGE_SHARED_GROUP, each its own certificate "
        "(bridge-2.crt, ...) and METRICS_PORT + n - 1; a dead one is started again",
    )
    p.add_argument(
        "--leave",
        type=int,
        nargs="?",
        const=1,
        metavar="N",
        help="end the broker session of this bridge (of worker N, with its identity) after "
        "handing what it holds to Kafka: run after taking a worker away, so its session "
        "collects no more of the group's messages",
    )
    return p


def build(
    settings: Settings,
    producer: RecordProducer | None = None,
    mqtt: MessageSource | None = None,
    *,
    metrics: BridgeMetrics | None = None,
    topics: TopicStatus | None = None,
    leaving: bool = False,
) -> BridgeService:
    """The bridge with its metrics; the real producer and MQTT side unless given (one that
    subscribes to nothing when `leaving`)."""
    metrics = metrics or BridgeMetrics()
    config = producer_config(settings.kafka)
    if producer is None:
        producer = Producer(config)
    if mqtt is None:
        mqtt = MqttSide(settings.mqtt, settings.bridge, metrics, leaving=leaving)
    return BridgeService(
        settings.kafka, settings.bridge, mqtt, producer, metrics,
        topics=topics, new_producer=lambda: Producer(config),
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.load()
    configure_logging("bridge", settings.common.log_level, settings.common.log_format)
    if args.workers != 1 and args.leave is not None:
        raise SettingsError("--leave ends one worker's session: run it without --workers")
    if args.workers != 1:
        return run_workers(settings, args.workers)
    leaving = args.leave is not None
    if leaving:
        settings = leaving_settings(settings, args.leave)
    kafka = settings.kafka
    wait_for_topics(kafka)
    metrics = BridgeMetrics()
    # The topics this bridge produces to, checked while it runs (a broker restarted empty).
    produced = {kafka.kafka_raw_topic, kafka.kafka_deadletter_topic}
    watched = {t: n for t, n in pipeline_topics(kafka).items() if t in produced}
    watch = TopicWatch(kafka, watched, metrics).start()
    service = build(settings, metrics=metrics, topics=watch, leaving=leaving)
    try:
        return serve(
            "bridge", service, service.leave if leaving else service.run,
            host=settings.observability.metrics_host, port=settings.metrics_port,
            registry=service.metrics.registry, leaving=leaving,
            topics=wanted_filters(settings.bridge, leaving=leaving),
        )  # fmt: skip
    finally:
        watch.stop()


def wait_for_topics(kafka: KafkaSettings) -> None:
    """Create the pipeline's topics, waiting for Kafka if it is not up yet; a raw topic with
    another partition count than KAFKA_RAW_PARTITIONS stops start-up (PartitionCountError):
    the bridge places each device on a partition by that count."""
    delay = 1.0
    while True:
        try:
            verify_topics(kafka, pipeline_topics(kafka), strict={kafka.kafka_raw_topic}, timeout=10)
            return
        except KafkaException as exc:
            log.warning("Kafka not reachable yet", extra={"error": str(exc), "retry_in_s": delay})
            time.sleep(delay)
            delay = min(delay * 2, 30)


def leaving_settings(settings: Settings, n: int) -> Settings:
    """Worker `n`'s settings (the bridge's own for 1), to end its session with `--leave`."""
    if not 1 <= n <= MAX_WORKERS:
        raise SettingsError(f"--leave must be 1..{MAX_WORKERS}, not {n}")
    # Read again from the environment, as a worker reads them: one path for both.
    os.environ.update(worker_plan(settings, n))
    return Settings.load()


def run_workers(settings: Settings, workers: int) -> int:
    """`--workers N`: this process supervises N bridges (workers.py) and bridges nothing."""
    try:
        plans = worker_settings(settings, workers)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    supervisor = Supervisor(plans)
    on_shutdown_signal(supervisor.stop)
    log.info("bridge workers starting", extra={"workers": workers})
    return supervisor.run()
