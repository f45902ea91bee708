"""Prometheus series of the simulator (served on METRICS_PORT, default 9104), in a registry of
its own: two simulators in one test process never share a counter. `/metrics` serves it with
the process and Python collectors."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from f2pipe_shared.metrics import ServiceMetrics
from f2pipe_shared.topics import ComponentKind

ENROLMENT_RESULTS = ("enrolled", "reused", "failed")
READER_SIGNALS = ("success", "fail_1", "fail_2")


class SimulatorMetrics(ServiceMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("simulator_", registry)
        self.controllers = self.gauge("controllers", "Controllers this process simulates")
        self.connected = self.gauge(
            "controllers_connected", "Controllers connected to the broker now"
        )
        self.enrolments = self.counter(
            "enrolments_total",
            "Controllers by how they got their certificate: enrolled now, reused from the state "
            "directory, or failed",
            ["result"],
        )
        self.connects = self.counter(
            "connects_total",
            "Connection attempts to the broker: ok, or the kind of failure",
            ["result"],
        )
        self.disconnects = self.counter(
            "disconnects_total", "Connections lost unexpectedly (each is followed by a reconnect)"
        )
        self.published = self.counter(
            "messages_published_total",
            "Messages the broker acknowledged (QoS 1), by component kind",
            ["kind"],
        )
        self.refused = self.counter(
            "messages_refused_total",
            "Messages the broker refused (PUBACK reason >= 128, e.g. not authorised)",
            ["kind"],
        )
        self.dropped = self.counter(
            "messages_dropped_total",
            "Messages not sent: the controller's queue was full (normal mode only; load mode "
            "waits)",
            ["kind"],
        )
        self.outstanding = self.gauge(
            "messages_outstanding", "Messages handed to MQTT and not yet acknowledged"
        )
        self.readings = self.counter(
            "readings_total", "Datapoint values in acknowledged messages (what must be stored)"
        )
        self.commands = self.counter(
            "commands_total",
            "Commands received, by component kind and what came of them (answered, reported, "
            "signalled, invalid, wrong_mode, ignored)",
            ["kind", "result"],
        )
        self.reader_signals = self.counter(
            "reader_signals_total",
            "Reader light feedback received: success, fail_1, fail_2",
            ["signal"],
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
