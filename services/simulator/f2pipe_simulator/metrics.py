"""Prometheus series of the simulator (served on METRICS_PORT, default 9104), in a registry of
its own: two simulators in one test process never share a counter. `/metrics` serves it with
the process and Python collectors."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
)

from f2pipe_shared.topics import ComponentKind

ENROLMENT_RESULTS = ("enrolled", "reused", "failed")
READER_SIGNALS = ("success", "fail_1", "fail_2")


class SimulatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.controllers = Gauge(
            "simulator_controllers", "Controllers this process simulates", registry=r
        )
        self.connected = Gauge(
            "simulator_controllers_connected",
            "Controllers connected to the broker now",
            registry=r,
        )
        self.enrolments = Counter(
            "simulator_enrolments_total",
            "Controllers by how they got their certificate: enrolled now, reused from the state "
            "directory, or failed",
            ["result"],
            registry=r,
        )
        self.connects = Counter(
            "simulator_connects_total",
            "Connection attempts to the broker: ok, or the kind of failure",
            ["result"],
            registry=r,
        )
        self.disconnects = Counter(
            "simulator_disconnects_total",
            "Connections lost unexpectedly (each is followed by a reconnect)",
            registry=r,
        )
        self.published = Counter(
            "simulator_messages_published_total",
            "Messages the broker acknowledged (QoS 1), by component kind",
            ["kind"],
            registry=r,
        )
        self.refused = Counter(
            "simulator_messages_refused_total",
            "Messages the broker refused (PUBACK reason >= 128, e.g. not authorised)",
            ["kind"],
            registry=r,
        )
        self.dropped = Counter(
            "simulator_messages_dropped_total",
            "Messages not sent: the controller's queue was full (normal mode only; load mode "
            "waits)",
            ["kind"],
            registry=r,
        )
        self.outstanding = Gauge(
            "simulator_messages_outstanding",
            "Messages handed to MQTT and not yet acknowledged",
            registry=r,
        )
        self.readings = Counter(
            "simulator_readings_total",
            "Datapoint values in acknowledged messages (what must be stored)",
            registry=r,
        )
        self.commands = Counter(
            "simulator_commands_total",
            "Commands received, by component kind and what came of them (answered, reported, "
            "signalled, invalid, wrong_mode, ignored)",
            ["kind", "result"],
            registry=r,
        )
        self.reader_signals = Counter(
            "simulator_reader_signals_total",
            "Reader light feedback received: success, fail_1, fail_2",
            ["signal"],
            registry=r,
        )
        # The labelled series at 0, so dashboards and tests see them before any event.
        for kind in ComponentKind:
            self.published.labels(kind.value)
            self.refused.labels(kind.value)
            self.dropped.labels(kind.value)
        for result in ENROLMENT_RESULTS:
            self.enrolments.labels(result)
        for signal in READER_SIGNALS:
            self.reader_signals.labels(signal)

    def enrolment(self, result: str) -> None:
        """One controller's enrolment result (``on_result`` of the enrolment)."""
        self.enrolments.labels(result).inc()
