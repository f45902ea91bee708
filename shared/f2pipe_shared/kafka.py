"""confluent-kafka configuration and topic set-up shared by the bridge, processor and sink."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from f2pipe_shared.metrics import ServiceMetrics
from f2pipe_shared.settings import KafkaSettings, SettingsError

log = logging.getLogger(__name__)


# Errors about the record itself (its size, its format): sending it again cannot succeed.
_RECORD_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
    }
)


_AUTH_ERRORS = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError._SSL,
    }
)


def record_refused(err: KafkaError | None) -> bool:
    """True when Kafka refuses the record itself, so a retry would fail the same way."""
    return err is not None and err.code() in _RECORD_ERRORS


def kafka_error(exc: KafkaException) -> KafkaError | None:
    """The KafkaError a KafkaException carries, if any."""
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


class KafkaAuthError(SettingsError):
    """Kafka refused this service's credentials: a settings problem, named as one."""


class AuthFailureLog:
    """librdkafka's error_cb: a refused login becomes one clear log line per minute.

    librdkafka retries a refused login forever and says so on stderr in its own words;
    this names the settings to check, and `seen` lets start-up fail with the same words.
    """

    def __init__(self, settings: KafkaSettings, every: float = 60.0) -> None:
        self.message = describe_auth_failure(settings)
        self.seen = False
        self._every = every
        self._last = -every

    def __call__(self, err: KafkaError) -> None:
        if not authentication_failed(err):
            return
        self.seen = True
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            log.error(self.message, extra={"kafka_error": err.name()})


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    """Where Kafka is and how this service proves who it is: every client starts from it."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol,
        "error_cb": AuthFailureLog(settings),
        # No client creates a topic by asking for it: a broker that auto-creates topics
        # (Tansu does, with 4 partitions) would otherwise re-create a lost topic with its own
        # partition count. Topics are created by ensure_topics, with the configured count.
        "allow.auto.create.topics": False,
    }
    if settings.kafka_security_protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = password.get_secret_value() if password else ""
    if settings.kafka_security_protocol.endswith("SSL"):
        # Verify the broker's certificate and name (librdkafka's defaults, made explicit).
        config["enable.ssl.certificate.verification"] = True
        config["ssl.endpoint.identification.algorithm"] = "https"
        if settings.kafka_ssl_ca_file:
            config["ssl.ca.location"] = settings.kafka_ssl_ca_file
    return config


def list_topics(settings: KafkaSettings, timeout: float = 30.0) -> ClusterMetadata:
    """The cluster's topics; KafkaAuthError, naming the settings, when the login is refused."""
    config = client_config(settings)
    auth: AuthFailureLog = config["error_cb"]
    admin = AdminClient(config)
    deadline = time.monotonic() + timeout
    while True:  # in slices: a refused login ends the wait at once
        try:
            return admin.list_topics(timeout=min(2.0, max(deadline - time.monotonic(), 0.1)))
        except KafkaException:
            admin.poll(0.1)  # serves error_cb
            if auth.seen:
                raise KafkaAuthError(auth.message) from None
            if time.monotonic() >= deadline:
                raise


def authentication_failed(err: KafkaError | None) -> bool:
    """True when Kafka refused this service's credentials (or its TLS handshake)."""
    return err is not None and err.code() in _AUTH_ERRORS


def describe_auth_failure(settings: KafkaSettings) -> str:
    """One line for the log: what was refused and which settings to check (no secret)."""
    if settings.kafka_security_protocol.startswith("SASL_"):
        return (
            f"Kafka refused the login of KAFKA_SASL_USERNAME={settings.kafka_sasl_username!r} "
            f"({settings.kafka_sasl_mechanism}): check KAFKA_SASL_PASSWORD"
        )
    return (
        f"Kafka refused the connection (KAFKA_SECURITY_PROTOCOL="
        f"{settings.kafka_security_protocol}): check KAFKA_SECURITY_PROTOCOL, the SASL user "
        "and KAFKA_SSL_CA_FILE against the broker's listener"
    )


def producer_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer: acks=all, retries without duplicates or reordering."""
    config: dict[str, Any] = {
        **client_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 5,
        "batch.num.messages": 10_000,
    }
    config.update(overrides)
    return config


# The longest a fetch waits for records. Tansu answers a fetch that found nothing new only when
# this has passed, however soon records arrive (Kafka answers as soon as they do): at
# librdkafka's 500 ms (Faust's aiokafka consumer: 1,500 ms) every hop of a lightly loaded
# pipeline waited up to that long, most of the device -> database latency. Measured on Tansu:
# produce -> consume median 115 ms at 500, 16 ms at 100. An idle consumer asks 10 times a
# second instead of twice: nothing to a broker.
FETCH_MAX_WAIT_MS = 100


def consumer_config(settings: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Manual commits only: a stage commits after its output is safe."""
    config: dict[str, Any] = {
        **client_config(settings),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": settings.kafka_max_poll_interval_ms,
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        # librdkafka's default (3 s) lets a short session time out between heartbeats;
        # a third of the session is the usual ratio.
        "heartbeat.interval.ms": min(3000, settings.kafka_session_timeout_ms // 3),
        # Tansu makes a consumer with a full local queue wait 1 s between fetches; 10 ms is
        # about 4x faster there and harmless on Apache Kafka (docs/architecture.md).
        "fetch.queue.backoff.ms": 10,
        "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
    }
    config.update(overrides)
    return config


def pipeline_topics(settings: KafkaSettings) -> dict[str, int]:
    """Every topic of the pipeline with its partition count."""
    return {
        settings.kafka_raw_topic: settings.kafka_raw_partitions,
        settings.kafka_processed_topic: settings.kafka_processed_partitions,
        settings.kafka_deadletter_topic: settings.kafka_processed_partitions,
    }


def ensure_topics(
    settings: KafkaSettings,
    topics: Mapping[str, int],
    timeout: float = 30.0,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:
    """Create the missing topics (with `configs[name]`, if any); return the names created now.
    Existing ones are kept."""
    existing = set(list_topics(settings, timeout).topics)
    admin = AdminClient(client_config(settings))
    configs = configs or {}
    wanted = [
        NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=settings.kafka_replication_factor,
            config=dict(configs.get(name, {})),
        )
        for name, partitions in topics.items()
        if name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
            log.info("created topic", extra={"topic": name, "partitions": topics[name]})
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a racing replica
                raise
    return created


# --- partition counts and lost topics ---------------------------------------------------------

TOPIC_CHECK_SECONDS = 2.0  # how often a running service checks that its topics still exist


class PartitionCountError(SettingsError):
    """A topic exists with another partition count than configured, where that matters."""


@dataclass(frozen=True, slots=True)
class PartitionMismatch:
    topic: str
    actual: int
    configured: int
    setting: str  # the variable that configures it

    def __str__(self) -> str:
        return (
            f"topic {self.topic} has {self.actual} partitions, configured {self.configured} "
            f"({self.setting}): set {self.setting}={self.actual} to use the topic as it is, or "
            f"delete the topic once its consumers have read it (f2pipe creates it again with "
            f"{self.configured}); see docs/operations.md, 'partition count'"
        )


def partition_setting(settings: KafkaSettings, topic: str) -> str:
    """The variable that configures `topic`'s partition count."""
    if topic == settings.kafka_raw_topic:
        return "KAFKA_RAW_PARTITIONS"
    return "KAFKA_PROCESSED_PARTITIONS"


def partition_mismatches(
    settings: KafkaSettings, topics: Mapping[str, int], actual: Mapping[str, int]
) -> list[PartitionMismatch]:
    """The topics of `actual` (name -> partitions) whose count differs from `topics`."""
    return [
        PartitionMismatch(name, actual[name], wanted, partition_setting(settings, name))
        for name, wanted in topics.items()
        if name in actual and actual[name] != wanted
    ]


def verify_topics(
    settings: KafkaSettings,
    topics: Mapping[str, int],
    *,
    strict: Collection[str] = (),
    timeout: float = 30.0,
) -> list[PartitionMismatch]:
    """Create the missing topics, then compare every partition count with the configured one.

    A mismatch of a topic in `strict` raises PartitionCountError (start-up refused); the
    others are logged as errors and returned (the service runs, and reports them).
    """
    ensure_topics(settings, topics, timeout)
    metadata = list_topics(settings, timeout)
    actual = {name: len(meta.partitions) for name, meta in metadata.topics.items()}
    mismatches = partition_mismatches(settings, topics, actual)
    refused = [m for m in mismatches if m.topic in strict]
    if refused:
        raise PartitionCountError("; ".join(map(str, refused)))
    for mismatch in mismatches:
        log.error(str(mismatch), extra={"topic": mismatch.topic})
    return mismatches


def present(found: Mapping[str, tuple[str | None, int]]) -> dict[str, str]:
    """topic -> its id, of the topics a TopicWatch description found on the broker."""
    return {t: tid for t, (tid, _) in found.items() if tid is not None}


class TopicWatch:
    """A running service's check, every TOPIC_CHECK_SECONDS, that its topics still exist.

    A broker that restarted empty (Tansu in memory, a wiped data directory) has lost every
    topic and every producer id: its records are gone, and librdkafka's idempotent producer
    retries forever with a producer id the broker no longer knows. The watch notices a topic
    missing (it creates it again, with the configured partitions) or created again under
    another id (by another service first), logs it as the data loss it is, counts it, and
    bumps `generation`: a service seeing it change replaces its producer.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topics: Mapping[str, int],
        metrics: ServiceMetrics,
        interval: float = TOPIC_CHECK_SECONDS,
        configs: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """`configs`: topic -> its configuration when created again (a compacted changelog)."""
        self.settings = settings
        self.topics = dict(topics)
        self.configs = dict(configs or {})
        self.interval = interval
        self.generation = 0  # bumped each time topics were lost
        self.mismatches: list[PartitionMismatch] = []
        self._ids: dict[str, str] = {}
        self._last_error = ""
        self._admin: AdminClient | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="topic-watch", daemon=True)
        self._lost = metrics.counter(
            "kafka_topics_lost",
            "times a topic was found missing or created again (the broker lost its records)",
            ["topic"],
        )
        self._mismatch = metrics.gauge(
            "kafka_topic_partitions_mismatch",
            "1 while a topic's partition count differs from the configured one",
            ["topic"],
        )

    def start(self) -> TopicWatch:
        # The topics there now are "seen": should the broker lose them before the first
        # check, that check calls it a loss (and replaces the producer), not a first creation.
        try:
            self._ids = present(self._describe())
        except Exception:  # Kafka away: the first check sees what there is
            self._ids = {}
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def problems(self) -> list[str]:
        """What /healthz says about the topics (empty: all as configured)."""
        return [str(m) for m in self.mismatches]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as exc:  # Kafka away, say: look again later
                error, last = str(exc), self._last_error
                self._last_error = error
                # Once per new error: an outage would otherwise log every few seconds.
                log.log(logging.DEBUG if error == last else logging.WARNING,
                        "could not check the Kafka topics", extra={"error": error})  # fmt: skip
            else:
                self._last_error = ""

    def check(self) -> None:
        """Look once: create what is missing, note what was created again, compare counts."""
        found = self._describe()
        missing = {t: self.topics[t] for t, (tid, _) in found.items() if tid is None}
        # A missing topic the watch never saw was not lost: it is not created yet (Faust creates
        # its leader topic and changelogs after the watch starts). Created, not alarmed.
        lost = [t for t, (tid, _) in found.items()
                if t in self._ids and (tid is None or self._ids[t] != tid)]  # fmt: skip
        if lost:
            log.error(
                "Kafka lost topic(s) %s (the broker restarted empty?): their records not yet "
                "consumed are lost; creating the missing ones again with the configured "
                "partitions",
                ", ".join(lost),
                extra={"topics": lost, "recreated": sorted(set(lost) & missing.keys())},
            )
            for topic in lost:
                self._lost.labels(topic=topic).inc()
            self.generation += 1
        if missing:
            ensure_topics(self.settings, missing, timeout=10, configs=self.configs)
        if missing or lost:
            found = self._describe()
        self._ids = present(found)
        actual = {t: n for t, (tid, n) in found.items() if tid is not None}
        mismatches = partition_mismatches(self.settings, self.topics, actual)
        for mismatch in set(mismatches) - set(self.mismatches):  # once, not every check
            log.error(str(mismatch), extra={"topic": mismatch.topic})
        self.mismatches = mismatches
        for topic in self.topics:
            self._mismatch.labels(topic=topic).set(any(m.topic == topic for m in mismatches))

    def _describe(self) -> dict[str, tuple[str | None, int]]:
        """topic -> (its id, partitions), (None, 0) when the broker does not have it."""
        if self._admin is None:
            self._admin = AdminClient(client_config(self.settings))
        futures = self._admin.describe_topics(TopicCollection(list(self.topics)))
        found: dict[str, tuple[str | None, int]] = {}
        for name, future in futures.items():
            try:
                description = future.result(10)
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None or err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
                found[name] = (None, 0)
                continue
            found[name] = (str(description.topic_id), len(description.partitions))
        return found
