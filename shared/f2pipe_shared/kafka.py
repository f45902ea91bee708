"""confluent-kafka configuration and topic set-up shared by the bridge, processor and sink."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

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
    settings: KafkaSettings, topics: Mapping[str, int], timeout: float = 30.0
) -> list[str]:
    """Create the missing topics; return the names created now. Existing ones are kept."""
    existing = set(list_topics(settings, timeout).topics)
    admin = AdminClient(client_config(settings))
    wanted = [
        NewTopic(
            name, num_partitions=partitions, replication_factor=settings.kafka_replication_factor
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
