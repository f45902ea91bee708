"""Prometheus series of the simulator (served on METRICS_PORT, default 9104)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from f2pipe_shared.topics import ComponentKind

CONTROLLERS = Gauge("simulator_controllers", "Controllers this process simulates")
CONNECTED = Gauge("simulator_controllers_connected", "Controllers connected to the broker now")
ENROLMENTS = Counter(
    "simulator_enrolments_total",
    "Controllers by how they got their certificate: enrolled now, reused from the state "
    "directory, or failed",
    ["result"],
)
CONNECTS = Counter(
    "simulator_connects_total",
    "Connection attempts to the broker: ok, or the kind of failure",
    ["result"],
)
DISCONNECTS = Counter(
    "simulator_disconnects_total", "Connections lost unexpectedly (each is followed by a reconnect)"
)
PUBLISHED = Counter(
    "simulator_messages_published_total",
    "Messages the broker acknowledged (QoS 1), by component kind",
    ["kind"],
)
REFUSED = Counter(
    "simulator_messages_refused_total",
    "Messages the broker refused (PUBACK reason >= 128, e.g. not authorised)",
    ["kind"],
)
DROPPED = Counter(
    "simulator_messages_dropped_total",
    "Messages not sent: the controller's queue was full (normal mode only; load mode waits)",
    ["kind"],
)
OUTSTANDING = Gauge(
    "simulator_messages_outstanding", "Messages handed to MQTT and not yet acknowledged"
)
READINGS = Counter(
    "simulator_readings_total", "Datapoint values in acknowledged messages (what must be stored)"
)
COMMANDS = Counter(
    "simulator_commands_total",
    "Commands received, by component kind and what came of them (answered, reported, signalled, "
    "invalid, wrong_mode, ignored)",
    ["kind", "result"],
)
READER_SIGNALS = Counter(
    "simulator_reader_signals_total",
    "Reader light feedback received: success, fail_1, fail_2",
    ["signal"],
)


def prepare() -> None:
    """Create the labelled series at 0, so dashboards and tests see them before any event."""
    for kind in ComponentKind:
        PUBLISHED.labels(kind.value)
        REFUSED.labels(kind.value)
        DROPPED.labels(kind.value)
    for result in ("enrolled", "reused", "failed"):
        ENROLMENTS.labels(result)
    for signal in ("success", "fail_1", "fail_2"):
        READER_SIGNALS.labels(signal)
