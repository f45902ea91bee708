"""The stack's one status line: messages in, readings written per second, lag, dead letters.

Rates come from two scrapes of the services' Prometheus counters; lag and dead letters from
Kafka (committed offsets of the consumer groups against the topics' high watermarks; on
Tansu, the development broker, a watermark can trail by the records of one produced batch,
docs/architecture.md, so there the lag is a close lower bound).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as PromSample

from f2pipe_devtools.dev import http

# (service, metric family) -> what the status line calls it
COUNTERS = {
    "in": ("bridge", "f2pipe_bridge_received"),
    "written": ("sink", "f2pipe_sink_rows_written"),
}


def fetch(url: str) -> list[PromSample]:
    """Every sample of a /metrics page; empty if unreachable."""
    answer = http.get(url)
    if answer is None or answer[0] != 200:
        return []
    return [s for family in text_string_to_metric_families(answer[1]) for s in family.samples]


def totals(samples: list[PromSample]) -> dict[str, float]:
    """Each sample name's value, labels summed away."""
    out: dict[str, float] = {}
    for sample in samples:
        out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def scrape(url: str) -> dict[str, float]:
    return totals(fetch(url))


@dataclass(frozen=True)
class Sample:
    at: float
    counters: dict[str, float | None]  # None: the service did not answer


def take_sample(metrics_urls: Mapping[str, str]) -> Sample:
    counters: dict[str, float | None] = {}
    pages: dict[str, dict[str, float]] = {}
    for label, (service, family) in COUNTERS.items():
        if service not in pages:
            pages[service] = scrape(metrics_urls[service]) if service in metrics_urls else {}
        counters[label] = pages[service].get(family + "_total")
    return Sample(time.monotonic(), counters)


def rates(before: Sample, after: Sample) -> dict[str, float | None]:
    """Per second between two samples; None where unknown or a counter restarted."""
    seconds = max(after.at - before.at, 1e-9)
    out: dict[str, float | None] = {}
    for label in COUNTERS:
        a, b = before.counters.get(label), after.counters.get(label)
        out[label] = None if a is None or b is None or b < a else (b - a) / seconds
    return out


class KafkaView:
    """Lag of the processor's and sink's groups, and the dead-letter topic's size."""

    # The settings it reads: `f2pipe dev status` gets them from the state file.
    SETTINGS = ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_RAW_TOPIC", "KAFKA_PROCESSED_TOPIC",
                "KAFKA_DEADLETTER_TOPIC", "PROCESSOR_APP_ID", "SINK_GROUP_ID")  # fmt: skip

    def __init__(self, env: Mapping[str, str]) -> None:
        self.bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
        self.groups = {
            "raw": (env.get("KAFKA_RAW_TOPIC", "raw-iot-data"),
                    env.get("PROCESSOR_APP_ID", "f2pipe-processor")),
            "processed": (env.get("KAFKA_PROCESSED_TOPIC", "processed-iot-data"),
                          env.get("SINK_GROUP_ID", "f2pipe-sink")),
        }  # fmt: skip
        self.dlq = env.get("KAFKA_DEADLETTER_TOPIC", "iot-dead-letter")

    def _consumer(self, group: str) -> Consumer:
        return Consumer({"bootstrap.servers": self.bootstrap, "group.id": group,
                         "enable.auto.commit": False, "log_level": 0})  # fmt: skip

    def _partitions(self, consumer: Consumer, topic: str) -> list[TopicPartition]:
        metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        return [TopicPartition(topic, p) for p in metadata.partitions]

    def lag(self, topic: str, group: str) -> int | None:
        consumer = self._consumer(group)
        try:
            partitions = self._partitions(consumer, topic)
            committed = consumer.committed(partitions, timeout=5) if partitions else []
            total = 0
            for tp in committed:
                low, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                total += max(0, high - (tp.offset if tp.offset >= 0 else low))
            return total
        except KafkaException:
            return None
        finally:
            consumer.close()

    def status_line(self, per_second: Mapping[str, float | None], unhealthy: list[str]) -> str:
        lags = {name: self.lag(topic, group) for name, (topic, group) in self.groups.items()}
        return status_line(per_second, lags, self.dead_letters(), unhealthy)

    def dead_letters(self) -> int | None:
        consumer = self._consumer("f2pipe-dev-status")
        try:
            total = 0
            for tp in self._partitions(consumer, self.dlq):
                low, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                total += high - low
            return total
        except KafkaException:
            return None
        finally:
            consumer.close()


def _num(value: float | None, unit: str) -> str:
    return "?" if value is None else f"{value:,.0f} {unit}"


def status_line(
    per_second: Mapping[str, float | None],
    lags: Mapping[str, int | None],
    dead_letters: int | None,
    unhealthy: list[str],
) -> str:
    lag = " ".join(f"{name} {_num(value, 'rec')}" for name, value in lags.items())
    health = "all healthy" if not unhealthy else "UNHEALTHY: " + ", ".join(unhealthy)
    return (
        f"in {_num(per_second.get('in'), 'msg/s')} | "
        f"written {_num(per_second.get('written'), 'rows/s')} | lag {lag} | "
        f"dead letters {_num(dead_letters, '')}".rstrip()
        + f" | {health}"
    )


def kafka_lost(times: list[str]) -> str | None:
    """What `dev status` says once the memory-storage broker restarted empty (times HH:MM:SS
    of each loss since `dev up`)."""
    if not times:
        return None
    again = f" ({len(times)} times since `dev up`)" if len(times) > 1 else ""
    return (
        f"the local Kafka lost what it held at {times[-1]}{again}: readings published before "
        "then and not yet processed are gone"
    )


def restart_note(server: Mapping[str, object]) -> str:
    """`` (died 1x, last at 21:40:12: signal 9; restarted 1x)``, or nothing for a server that
    never died since `dev up`."""
    deaths = server.get("deaths")
    if not isinstance(deaths, list) or not deaths:
        return ""
    note = (
        f" (died {len(deaths)}x, last at {deaths[-1]}: {server.get('last_exit')}; "
        f"restarted {server.get('restarts', 0)}x"
    )
    return note + (", restart pending)" if server.get("down") else ")")
