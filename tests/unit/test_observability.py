from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from f2pipe_shared.metrics import ServiceMetrics
from f2pipe_shared.observability import ObservabilityServer


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_health_are_served() -> None:
    registry = CollectorRegistry()
    Counter("f2pipe_test_messages", "messages", registry=registry).inc(3)
    state: dict[str, Any] = {"ok": True}
    server = ObservabilityServer(
        "127.0.0.1", 0, lambda: (state["ok"], {"kafka": "up"}), registry
    ).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, body = get(f"{base}/metrics")
        assert status == 200
        assert "f2pipe_test_messages_total 3.0" in body
        status, body = get(f"{base}/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "kafka": "up"})
        state["ok"] = False
        status, body = get(f"{base}/healthz")
        assert status == 503
        assert json.loads(body)["status"] == "unhealthy"
        assert get(f"{base}/nope")[0] == 404
    finally:
        server.stop()


def test_service_metrics_prefix_labels_and_own_registry() -> None:
    class Metrics(ServiceMetrics):
        def __init__(self, registry: CollectorRegistry | None = None) -> None:
            super().__init__("f2pipe_demo_", registry)
            self.sent = self.counter("sent", "messages sent", ["kind"])
            self.up = self.gauge("up", "1 while up")
            self.seconds = self.histogram("seconds", "time per batch", (0.1, 1.0), ["stage"])

    one, two = Metrics(), Metrics()
    assert one.registry is not two.registry  # same names twice: no "Duplicated timeseries"
    one.sent.labels(kind="scan").inc(2)
    one.up.set(1)
    one.seconds.labels(stage="decode").observe(0.5)
    value = one.registry.get_sample_value
    assert value("f2pipe_demo_sent_total", {"kind": "scan"}) == 2
    assert value("f2pipe_demo_up") == 1
    assert value("f2pipe_demo_seconds_bucket", {"stage": "decode", "le": "0.1"}) == 0
    assert value("f2pipe_demo_seconds_bucket", {"stage": "decode", "le": "1.0"}) == 1
    assert two.registry.get_sample_value("f2pipe_demo_sent_total", {"kind": "scan"}) is None
    families = {family.name for family in one.registry.collect()}
    assert {"process_cpu_seconds", "python_info"} <= families
    assert "python_gc_objects_collected" not in families


def test_service_metrics_uses_a_given_registry_and_adds_gc_on_request() -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics("f2pipe_demo_", registry, gc=True)
    assert metrics.registry is registry
    metrics.counter("records", "records").inc()
    assert registry.get_sample_value("f2pipe_demo_records_total") == 1
    families = {family.name for family in registry.collect()}
    assert {"process_cpu_seconds", "python_info", "python_gc_objects_collected"} <= families
