"""The environment a service process is started with, built in one place.

The local stack (`f2pipe dev`), the benchmarks and the test kits all start services as real
processes configured by environment variables. They share these builders, so a new setting
or server is wired once: `service_env(postgres_env(...), kafka_env(...), METRICS_PORT=...)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from psycopg.conninfo import conninfo_to_dict, make_conninfo

# What f2pipe reads; a developer's shell exporting one must not change a test's service.
OUR_PREFIXES = (
    "F2PIPE_", "LOG_", "METRICS_", "POSTGRES_", "TIMESCALE_", "TELEMETRY_", "REDIS_", "KAFKA_",
    "MQTT_", "CA_", "BROKER_", "DEVICE_", "CERTGEN_", "BRIDGE_", "PROCESSOR_", "SINK_",
    "SIMULATOR_", "API_", "BATCH_SIZE", "FLUSH_INTERVAL", "PUBLISH_INTERVAL",
)  # fmt: skip
HOST = "127.0.0.1"
# Tansu holds a consumer-group join for up to the rebalance timeout, and a member that joins
# while a killed one's session lasts waits 3 s more (docs/architecture.md): short timeouts
# bring a restarted or second member in within seconds. Session 3 s rather than 5 s: a killed
# processor's successor processed again 4.9-5.4 s after the kill, not 6.1-13.5 s.
FAST_GROUPS = {"KAFKA_MAX_POLL_INTERVAL_MS": "5000", "KAFKA_SESSION_TIMEOUT_MS": "3000"}


def foreign_environ() -> dict[str, str]:
    """This process's environment without any f2pipe setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(OUR_PREFIXES)}


def service_env(*parts: Mapping[str, str], **settings: str) -> dict[str, str]:
    """For tests and benchmarks: the shell's environment without its f2pipe settings, then
    `parts` and `settings` in order (a later one wins)."""
    return _merge(foreign_environ(), *parts, settings)


def stack_env(*parts: Mapping[str, str], **settings: str) -> dict[str, str]:
    """For the local stack: the shell's whole environment (a developer may set any f2pipe
    variable), then `parts` and `settings` in order."""
    return _merge(dict(os.environ), *parts, settings)


def _merge(*parts: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for part in parts:
        env.update(part)
    return env


def postgres_env(conninfo: str) -> dict[str, str]:
    """POSTGRES_* for a libpq conninfo (TIMESCALE_* unset: the same database)."""
    params = conninfo_to_dict(conninfo)
    env = {
        "POSTGRES_HOST": str(params.get("host", HOST)),
        "POSTGRES_PORT": str(params.get("port", 5432)),
        "POSTGRES_USER": str(params.get("user", "postgres")),
        "POSTGRES_DB": str(params.get("dbname", "postgres")),
        "POSTGRES_SSLMODE": str(params.get("sslmode", "disable")),
    }
    if params.get("password"):
        env["POSTGRES_PASSWORD"] = str(params["password"])
    return env


def as_user(conninfo: str, user: str, password: str | None) -> str:
    """The same database as another login (a service's role, in tests)."""
    params = {**conninfo_to_dict(conninfo), "user": user}
    params.pop("password", None)
    params.pop("passfile", None)
    if password is not None:
        params["password"] = password
    return make_conninfo("", **params)


def kafka_env(
    bootstrap: str,
    *,
    raw: str | None = None,
    processed: str | None = None,
    dead_letters: str | None = None,
    partitions: int | None = None,
    fast_groups: bool = True,
) -> dict[str, str]:
    """KAFKA_* for a broker and, optionally, a test's own topics and partition counts."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    topics = {"KAFKA_RAW_TOPIC": raw, "KAFKA_PROCESSED_TOPIC": processed,
              "KAFKA_DEADLETTER_TOPIC": dead_letters}  # fmt: skip
    env.update({name: topic for name, topic in topics.items() if topic})
    if partitions is not None:
        env["KAFKA_RAW_PARTITIONS"] = env["KAFKA_PROCESSED_PARTITIONS"] = str(partitions)
    if fast_groups:
        env.update(FAST_GROUPS)
    return env


def redis_env(host: str, port: int, password: str | None = None) -> dict[str, str]:
    env = {"REDIS_HOST": host, "REDIS_PORT": str(port)}
    if password:
        env["REDIS_PASSWORD"] = password
    return env


def mqtt_env(
    port: int, *, host: str = HOST, tls: bool = True, ca_file: str | None = None
) -> dict[str, str]:
    """MQTT_* for a broker: mutual TLS (checked against `ca_file` when given), or a plain
    test broker with `tls=False`."""
    env = {"MQTT_BROKER_HOST": host, "MQTT_BROKER_PORT": str(port)}
    if not tls:
        env["MQTT_TLS"] = "false"
    if ca_file is not None:
        env["MQTT_CA_FILE"] = ca_file
    return env
